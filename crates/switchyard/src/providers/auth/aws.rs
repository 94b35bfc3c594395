//! AWS credentials from the standard chain of the AWS SDK (`aws-config`):
//! environment, shared config and credentials files (a profile, with `role_arn`
//! AssumeRole and SSO), web identity, the container credentials endpoint and the
//! instance metadata service. The chain reads the process's environment and files
//! when first used, so that building a configuration does no I/O.

use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::ProvideCredentials;
use tokio::sync::OnceCell;

use super::{AuthError, Credential, FetchFuture, Fresh, Source};

pub struct Chain {
    region: String,
    profile: Option<String>,
    chain: OnceCell<DefaultCredentialsChain>,
}

impl Chain {
    pub fn new(region: &str, profile: Option<&str>) -> Self {
        Chain {
            region: region.to_owned(),
            profile: profile.map(str::to_owned),
            chain: OnceCell::new(),
        }
    }

    async fn chain(&self) -> &DefaultCredentialsChain {
        self.chain
            .get_or_init(|| async {
                let mut builder = DefaultCredentialsChain::builder()
                    .region(aws_config::Region::new(self.region.clone()));
                if let Some(p) = &self.profile {
                    builder = builder.profile_name(p);
                }
                builder.build().await
            })
            .await
    }
}

impl Source<Credential> for Chain {
    fn fetch(&self) -> FetchFuture<'_, Credential> {
        Box::pin(async move {
            let creds = self
                .chain()
                .await
                .provide_credentials()
                .await
                .map_err(|e| {
                    AuthError::Source(format!(
                        "no AWS credentials from the default chain: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    ))
                })?;
            let expires_in = creds.expiry().map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
            Ok(Fresh {
                value: Credential::Aws(creds),
                expires_in,
            })
        })
    }
}
