//! The validation of a configuration file that `switchyard config check` prints and
//! a live reload runs before it puts a file in force: parsing and validation
//! (`Config::load`, errors with the field's path and line), then the file against the
//! key store (`[[keys]]` names, the channels stored policies name). One place, so that a file `config check` accepts is one the
//! running gateway accepts, and the other way round; the two entry points differ only
//! in which handle on the key store they use.

use std::path::{Path, PathBuf};

use super::store::{Store, StoreError};
use super::{check_against_store, GovernanceError};
use crate::config::{Config, ConfigError};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file cannot be read, parsed or validated; the error names the field and
    /// its line.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The file is valid on its own, but does not fit the key store: a `[[keys]]`
    /// name is taken by a virtual key, or a stored policy names a channel the file
    /// does not define.
    #[error("{}: {source}", file.display())]
    StoreConflict {
        file: PathBuf,
        /// The offending field, `keys[N].name`.
        field: String,
        source: GovernanceError,
    },
    /// The key store could not be read to check the file against it.
    #[error("cannot read the key store to check the configuration: {0}")]
    Store(#[source] StoreError),
}

impl CheckError {
    /// The dotted path of the field to blame, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            CheckError::Invalid(e) => Some(e.path.as_str()).filter(|p| !p.is_empty()),
            CheckError::StoreConflict { field, .. } => Some(field),
            CheckError::Store(_) => None,
        }
    }

    /// Whether the file is to blame (rather than the key store being unreadable).
    pub fn is_invalid_file(&self) -> bool {
        !matches!(self, CheckError::Store(_))
    }
}

/// Reads, parses and validates `path` (secrets from the process environment), then
/// checks its `[[keys]]` against the key store when the store's file exists. This is
/// `switchyard config check`.
pub async fn check_config_file(path: &Path) -> Result<Config, CheckError> {
    let config = Config::load(path)?;
    if let Some(file) = config.governance.store.as_ref().filter(|p| p.exists()) {
        let store = Store::open(file).await.map_err(CheckError::Store)?;
        let checked = check_against(&config, path, &store).await;
        store.close().await;
        checked?;
    }
    Ok(config)
}

/// The same checks for a running gateway, against the key store it has open (the
/// one it keeps until a restart, whatever `governance.store` the file names now).
pub async fn check_config_file_against(
    path: &Path,
    store: Option<&Store>,
) -> Result<Config, CheckError> {
    let config = Config::load(path)?;
    if let Some(store) = store {
        check_against(&config, path, store).await?;
    }
    Ok(config)
}

async fn check_against(config: &Config, path: &Path, store: &Store) -> Result<(), CheckError> {
    match check_against_store(config, store).await {
        Ok(()) => Ok(()),
        Err(GovernanceError::Store(e)) => Err(CheckError::Store(e)),
        Err(source) => {
            let field = match &source {
                GovernanceError::NameCollision { field, .. } => field.clone(),
                GovernanceError::ChannelInUse { .. } => "channels".to_owned(),
                GovernanceError::Store(_) | GovernanceError::Storage(_) => String::new(),
            };
            Err(CheckError::StoreConflict {
                file: path.to_owned(),
                field,
                source,
            })
        }
    }
}
