//! Entra ID (Azure AD) client credentials: an app's id and secret exchanged for an
//! access token at `{authority}/{tenant}/oauth2/v2.0/token`.

use std::sync::Arc;

use super::{oauth_token, Credential, FetchFuture, Source};
use crate::config::AzureEntra;

pub struct ClientCredentials {
    client: reqwest::Client,
    app: Arc<AzureEntra>,
}

impl ClientCredentials {
    pub fn new(client: reqwest::Client, app: Arc<AzureEntra>) -> Self {
        ClientCredentials { client, app }
    }
}

impl Source<Credential> for ClientCredentials {
    fn fetch(&self) -> FetchFuture<'_, Credential> {
        Box::pin(async move {
            let a = &self.app;
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", a.client_id.as_str()),
                ("client_secret", a.client_secret.expose()),
                ("scope", a.scope.as_str()),
            ];
            oauth_token(self.client.post(&a.token_url).form(&form)).await
        })
    }
}
