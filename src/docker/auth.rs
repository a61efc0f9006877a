//! PLACEHOLDER until the `auth` branch is merged (issue 10).
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub identity_token: Option<String>,
    pub server_address: String,
}

pub struct ClientConfig;
impl ClientConfig {
    pub fn load(_explicit: Option<&std::path::Path>) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig)
    }
    pub fn path(&self) -> Option<&std::path::Path> {
        None
    }
    pub fn credentials(&self, _host: &str) -> anyhow::Result<Option<(Credentials, String)>> {
        Ok(None)
    }
}
