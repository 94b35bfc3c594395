//! The configuration `switchyard demo` runs: a few logical models served by the
//! built-in simulator, so a newcomer needs no provider account.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError};

/// The demo's configuration, against a simulator listening at `sim`; `admin_token`
/// opens the admin API and the dashboard.
pub fn config(
    listen: SocketAddr,
    sim: SocketAddr,
    key: &str,
    admin_token: &str,
    ledger: &Path,
) -> Result<Config, ConfigError> {
    let toml = format!(
        r#"
[server]
listen = "{listen}"
# No load balancer sits in front of the demo: Ctrl-C closes the listener at once.
drain_grace_ms = 0

[ledger]
path = {ledger:?}

[admin]
token = "${{SWITCHYARD_DEMO_ADMIN_TOKEN}}"

[[keys]]
name = "demo"
key = "${{SWITCHYARD_DEMO_KEY}}"
# Requests choose a channel with the x-switchyard-channel header.
policy = {{ channels = ["voice", "chat"] }}

# One assistant, two channels: each gets its own system prompt, limits and checks.
[channels.voice]
ttft_slo_ms = 800
total_slo_ms = 4000
system_prompt = "You are Ada, the voice assistant of Switchyard Rail. Answer in one or two short sentences."
max_output_tokens = 120

[channels.chat]
ttft_slo_ms = 2000
system_prompt = "You are Ada, the chat assistant of Switchyard Rail."
pii_output = "redact"

[providers.sim-openai]
kind = "openai"
base_url = "http://{sim}/v1"
api_key = "sk-sim-openai"

[providers.sim-openai-primary]
kind = "openai"
base_url = "http://{sim}/primary/v1"
api_key = "sk-sim-openai"

[providers.sim-azure]
kind = "azure"
endpoint = "http://{sim}"
api_version = "2024-10-21"
api_key = "sim-azure-key"

[providers.sim-anthropic]
kind = "anthropic"
base_url = "http://{sim}"
api_key = "sk-ant-sim"

[providers.sim-bedrock]
kind = "bedrock"
base_url = "http://{sim}"
region = "us-east-1"
access_key_id = "AKIDSIMULATOR"          # the simulator's default test credentials
secret_access_key = "sim-secret-key"

[providers.sim-gemini]
kind = "gemini"
base_url = "http://{sim}"
api_key = "sim-gemini-key"

[providers.sim-vertex]
kind = "vertex"
base_url = "http://{sim}"
project = "demo-project"
location = "us-central1"
api_key = "sim-vertex-token"

[providers.sim-mistral]
kind = "mistral"
base_url = "http://{sim}/mistral/v1"
api_key = "sim-mistral-key"

[deployments.openai-gpt-4o-mini]
provider = "sim-openai"
model = "gpt-4o-mini"
region = "us"
price = {{ input = 0.15, output = 0.60, cached_input = 0.075 }}

[deployments.openai-primary-gpt-4o-mini]
provider = "sim-openai-primary"
model = "gpt-4o-mini"
region = "us"
price = {{ input = 0.15, output = 0.60, cached_input = 0.075 }}
# Generous, so that the dashboard's Health page has quota headroom to show.
quota = {{ rpm = 10000, tpm = 10000000 }}

[deployments.azure-gpt-4o-mini]
provider = "sim-azure"
model = "gpt-4o-mini-prod"
region = "eu-west"
price = {{ input = 0.165, output = 0.66, cached_input = 0.0825 }}

[deployments.anthropic-claude-haiku]
provider = "sim-anthropic"
model = "claude-haiku-4-5"
price = {{ input = 1.00, output = 5.00, cached_input = 0.10 }}

[deployments.bedrock-claude-haiku]
provider = "sim-bedrock"
model = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
region = "us-east-1"
price = {{ input = 0.80, output = 4.00, cached_input = 0.08 }}

[deployments.gemini-flash]
provider = "sim-gemini"
model = "gemini-2.5-flash"
price = {{ input = 0.30, output = 2.50, cached_input = 0.075 }}

[deployments.vertex-gemini-flash]
provider = "sim-vertex"
model = "gemini-2.5-flash"
region = "us-central1"
price = {{ input = 0.30, output = 2.50, cached_input = 0.075 }}

[deployments.gemini-3-pro]
provider = "sim-gemini"
model = "gemini-3-pro-preview"
price = {{ input = 2.00, output = 12.00, cached_input = 0.20 }}

[deployments.anthropic-claude-opus]
provider = "sim-anthropic"
model = "claude-opus-4-7"
price = {{ input = 5.00, output = 25.00, cached_input = 0.50 }}

[deployments.mistral-small]
provider = "sim-mistral"
model = "mistral-small-latest"
region = "eu-west"
price = {{ input = 0.10, output = 0.30 }}

[deployments.openai-embed-small]
provider = "sim-openai"
model = "text-embedding-3-small"
price = {{ input = 0.02 }}

[models.gpt-4o-mini]
deployments = ["openai-gpt-4o-mini"]

[models.azure-gpt-4o-mini]
deployments = ["azure-gpt-4o-mini"]

[models.anthropic-claude-haiku]
deployments = ["anthropic-claude-haiku"]

[models.bedrock-claude-haiku]
deployments = ["bedrock-claude-haiku"]

[models.gemini-flash]
deployments = ["gemini-flash"]

[models.vertex-gemini-flash]
deployments = ["vertex-gemini-flash"]

[models.gemini-3-pro]
deployments = ["gemini-3-pro"]

[models.anthropic-claude-opus]
deployments = ["anthropic-claude-opus"]

[models.reasoning-failover]
deployments = ["anthropic-claude-opus", "gemini-3-pro"]

[models.mistral-small]
deployments = ["mistral-small"]

[models.support-chat]
deployments = ["openai-primary-gpt-4o-mini", "azure-gpt-4o-mini"]

[models.text-embedding-3-small]
deployments = ["openai-embed-small"]

# A monthly commitment with Azure, and a cap: `switchyard contracts` shows its burn.
[contracts.azure-commit]
provider = "sim-azure"
commitment_usd = "50"
cap_usd = "100"
"#
    );
    let key = key.to_owned();
    let admin_token = admin_token.to_owned();
    Config::parse(&toml, move |name| match name {
        "SWITCHYARD_DEMO_KEY" => Some(key.clone()),
        "SWITCHYARD_DEMO_ADMIN_TOKEN" => Some(admin_token.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn the_demo_has_a_model_per_provider_kind() {
        let sim = "127.0.0.1:9".parse().expect("addr");
        let listen = "127.0.0.1:0".parse().expect("addr");
        let c = super::config(
            listen,
            sim,
            "sy-demo-key-123456",
            "sy-admin-key-123456",
            std::path::Path::new("x.db"),
        )
        .expect("the demo config is valid");
        let kinds: BTreeSet<&str> = c
            .deployments
            .iter()
            .map(|d| d.provider.kind.label())
            .collect();
        for kind in crate::providers::KINDS {
            assert!(kinds.contains(kind), "no demo deployment of kind {kind}");
        }
    }
}
