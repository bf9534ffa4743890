-- Every change to `secrets`, by any writer (this host, Attune, psql), tells listeners which
-- schema changed: hosts that cache resolved ciphertexts (store::cache) empty their cache on it.
-- One notification per statement; PostgreSQL delivers it at commit, and not on rollback.
CREATE FUNCTION secrets_changed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('attune_secrets', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

CREATE TRIGGER secrets_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secrets
    FOR EACH STATEMENT EXECUTE FUNCTION secrets_changed_notify();
