//! The [`super::super::Backend`] implementation of each SQL dialect: a macro, so that it is
//! written once and yet instantiated for concrete drivers (whose futures are then checked to
//! be `Send` per driver, without the generic bounds of [`super::SqlBackend`] repeated).

/// Implements [`super::Backend`] for the [`SqlBackend`] of a dialect (concrete types, so that
/// the futures' `Send` is checked per driver): every method forwards to the one implementation
/// above.
macro_rules! sql_backend {
    ($dialect:ty) => {
        impl super::Backend for super::sql::SqlBackend<$dialect> {
            fn kind(&self) -> &'static str {
                self.kind()
            }
            fn location(&self) -> String {
                self.location()
            }
            fn database_file(&self) -> Option<&std::path::Path> {
                self.database_file()
            }
            fn watch_changes(
                &self,
                cache: std::sync::Weak<super::cache::RowCache>,
            ) -> Option<tokio::task::JoinHandle<()>> {
                self.watch_changes(cache)
            }
            fn visible_to<'a>(
                &'a self,
                action: &'a crate::secrets::names::ActionRef,
            ) -> super::BoxFuture<'a, super::Result<Vec<super::Visible>>> {
                Box::pin(self.visible_to(action))
            }
            fn floor_record(&self) -> super::BoxFuture<'_, super::Result<Option<String>>> {
                Box::pin(self.floor_record())
            }
            fn get<'a>(
                &'a self,
                owner: &'a crate::secrets::names::Owner,
                name: &'a crate::secrets::names::SecretName,
            ) -> super::BoxFuture<'a, super::Result<Option<super::SecretRow>>> {
                Box::pin(self.get(owner, name))
            }
            fn list<'a>(
                &'a self,
                owner: Option<&'a crate::secrets::names::Owner>,
            ) -> super::BoxFuture<'a, super::Result<Vec<super::Visible>>> {
                Box::pin(self.list(owner))
            }
            fn unnamed(&self) -> super::BoxFuture<'_, super::Result<Vec<(String, String)>>> {
                Box::pin(self.unnamed())
            }
            fn put<'a>(
                &'a self,
                secret: &'a super::NewSecret,
                replace: super::Replace<'a>,
            ) -> super::BoxFuture<'a, super::Result<super::Written>> {
                Box::pin(self.put(secret, replace))
            }
            fn put_many<'a>(
                &'a self,
                secrets: &'a [super::NewSecret],
                replace: super::Replace<'a>,
            ) -> super::BoxFuture<'a, super::Result<Vec<super::Written>>> {
                Box::pin(self.put_many(secrets, replace))
            }
            fn delete<'a>(
                &'a self,
                owner: &'a crate::secrets::names::Owner,
                name: &'a crate::secrets::names::SecretName,
            ) -> super::BoxFuture<'a, super::Result<bool>> {
                Box::pin(self.delete(owner, name))
            }
            fn replace_values<'a>(
                &'a self,
                rotations: &'a [super::Rotation],
                floor: &'a str,
            ) -> super::BoxFuture<'a, super::Result<()>> {
                Box::pin(self.replace_values(rotations, floor))
            }
            fn record_audit<'a>(
                &'a self,
                batch: &'a crate::store::audit::Batch,
            ) -> super::BoxFuture<'a, super::Result<()>> {
                Box::pin(self.record_audit(batch))
            }
            fn list_audit<'a>(
                &'a self,
                filter: &'a crate::store::audit::Filter,
            ) -> super::BoxFuture<'a, super::Result<Vec<crate::store::audit::Listed>>> {
                Box::pin(self.list_audit(filter))
            }
        }
    };
}
pub(in crate::store) use sql_backend;
