-- The subset of Attune's PostgreSQL schema that a worker touches, for scratch databases (tests,
-- scripts/attune-fleet.sh). Column names, types and enum values are Attune's (migrations
-- 20250101000001 "initial setup" enums, 20250101000005 "execution and operations" for
-- `execution` and `worker`, 20250101000007 + 20260831000001 for `key`); columns a worker never
-- reads are left out, and `pack`, `runtime` and `action` carry only what a worker reads.
-- docs/attune-protocol.md names the files and commits checked. NEVER run this against a real
-- Attune database: Attune's own migrations own that schema.

CREATE SCHEMA IF NOT EXISTS attune;
SET search_path TO attune, public;

CREATE TYPE worker_type_enum AS ENUM ('local', 'remote', 'container');
CREATE TYPE worker_role_enum AS ENUM ('action', 'sensor', 'hybrid');
CREATE TYPE worker_status_enum AS ENUM ('active', 'inactive', 'busy', 'error');
CREATE TYPE execution_status_enum AS ENUM (
    'requested', 'scheduling', 'scheduled', 'running', 'completed',
    'failed', 'canceling', 'cancelled', 'timeout', 'abandoned'
);
CREATE TYPE owner_type_enum AS ENUM ('system', 'identity', 'pack', 'action', 'sensor');

CREATE OR REPLACE FUNCTION update_updated_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE pack (
    id BIGSERIAL PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    description TEXT,
    version TEXT NOT NULL DEFAULT '0.1.0',
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE runtime (
    id BIGSERIAL PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    pack BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref TEXT,
    name TEXT NOT NULL,
    description TEXT,
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE action (
    id BIGSERIAL PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    pack BIGINT NOT NULL REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref TEXT NOT NULL,
    label TEXT NOT NULL,
    description TEXT,
    entrypoint TEXT NOT NULL,
    runtime BIGINT REFERENCES runtime(id),
    timeout_seconds INTEGER,
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE worker (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    worker_type worker_type_enum NOT NULL,
    worker_role worker_role_enum NOT NULL,
    runtime BIGINT REFERENCES runtime(id) ON DELETE SET NULL,
    host TEXT,
    port INTEGER,
    status worker_status_enum NOT NULL DEFAULT 'active',
    capabilities JSONB,
    meta JSONB,
    last_heartbeat TIMESTAMPTZ,
    cordoned BOOLEAN NOT NULL DEFAULT FALSE,
    cordon_reason TEXT,
    cordoned_at TIMESTAMPTZ,
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_worker_status_role ON worker(status, worker_role);

CREATE TABLE execution (
    id BIGSERIAL PRIMARY KEY,
    action BIGINT REFERENCES action(id) ON DELETE SET NULL,
    action_ref TEXT NOT NULL,
    config JSONB,
    env_vars JSONB,
    parent BIGINT REFERENCES execution(id) ON DELETE SET NULL,
    enforcement BIGINT,
    executor BIGINT,
    worker BIGINT REFERENCES worker(id) ON DELETE SET NULL,
    status execution_status_enum NOT NULL DEFAULT 'requested',
    result JSONB,
    started_at TIMESTAMPTZ,
    timeout_seconds INTEGER,
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER,
    retry_reason TEXT,
    original_execution BIGINT REFERENCES execution(id) ON DELETE SET NULL,
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT execution_timeout_seconds_positive CHECK (timeout_seconds IS NULL OR timeout_seconds > 0)
);
CREATE INDEX idx_execution_status ON execution(status);
CREATE INDEX idx_execution_worker_created ON execution(worker, created DESC);

CREATE TABLE key (
    id BIGSERIAL PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    local_ref TEXT NOT NULL,
    owner_type owner_type_enum NOT NULL,
    owner TEXT,
    owner_identity BIGINT,
    owner_pack BIGINT REFERENCES pack(id),
    owner_pack_ref TEXT,
    owner_action BIGINT REFERENCES action(id),
    owner_action_ref TEXT,
    owner_sensor BIGINT,
    owner_sensor_ref TEXT,
    name TEXT NOT NULL,
    encrypted BOOLEAN NOT NULL,
    encryption_key_hash TEXT,
    value JSONB NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CONSTRAINT key_local_ref_format CHECK (local_ref ~ '^[a-z0-9][a-z0-9_-]{0,62}$')
);
CREATE UNIQUE INDEX idx_key_unique ON key(owner_type, owner, name);
CREATE INDEX idx_key_owner_pack ON key(owner_pack);
CREATE INDEX idx_key_owner_action ON key(owner_action);

-- Attune's validate_key_owner trigger (20260831000001), for the owner types a scratch database
-- has tables for: fills owner, the owner ref columns and the canonical ref.
CREATE OR REPLACE FUNCTION validate_key_owner()
RETURNS TRIGGER AS $$
BEGIN
    IF NEW.owner_type = 'system' THEN
        NEW.owner := 'system';
        NEW.owner_pack_ref := NULL;
        NEW.owner_action_ref := NULL;
        NEW.ref := 'system.' || NEW.local_ref;
    ELSIF NEW.owner_type = 'pack' THEN
        SELECT ref INTO STRICT NEW.owner_pack_ref FROM pack WHERE id = NEW.owner_pack;
        NEW.owner := NEW.owner_pack_ref;
        NEW.owner_action_ref := NULL;
        NEW.ref := 'pack.' || NEW.owner_pack_ref || '.' || NEW.local_ref;
    ELSIF NEW.owner_type = 'action' THEN
        SELECT ref INTO STRICT NEW.owner_action_ref FROM action WHERE id = NEW.owner_action;
        NEW.owner := NEW.owner_action_ref;
        NEW.owner_pack_ref := NULL;
        NEW.ref := 'action.' || NEW.owner_action_ref || '.' || NEW.local_ref;
    ELSIF NEW.owner_type = 'identity' THEN
        NEW.ref := 'identity.' || COALESCE(NEW.owner, NEW.owner_identity::text) || '.' || NEW.local_ref;
    ELSIF NEW.owner_type = 'sensor' THEN
        NEW.ref := 'sensor.' || COALESCE(NEW.owner_sensor_ref, NEW.owner_sensor::text) || '.' || NEW.local_ref;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER validate_key_owner_trigger
    BEFORE INSERT OR UPDATE ON key
    FOR EACH ROW
    EXECUTE FUNCTION validate_key_owner();

CREATE TRIGGER update_pack_updated BEFORE UPDATE ON pack
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
CREATE TRIGGER update_runtime_updated BEFORE UPDATE ON runtime
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
CREATE TRIGGER update_action_updated BEFORE UPDATE ON action
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
CREATE TRIGGER update_worker_updated BEFORE UPDATE ON worker
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
CREATE TRIGGER update_execution_updated BEFORE UPDATE ON execution
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
CREATE TRIGGER update_key_updated BEFORE UPDATE ON key
    FOR EACH ROW EXECUTE FUNCTION update_updated_column();
