//! Configuration of OPC UA servers read by the edge.
//!
//! ```toml
//! [[edge.opcua.servers]]
//! name = "line-1"
//! endpoint = "opc.tcp://10.0.0.5:4840"
//! security_policy = "basic256sha256"  # none | basic256sha256 | aes128_sha256_rsaoaep | aes256_sha256_rsapss
//! security_mode = "sign_and_encrypt"  # none | sign | sign_and_encrypt
//! auth = "username"                   # anonymous | username | certificate
//! username = "edge"
//! password_env = "LINE1_OPCUA_PASSWORD"
//! namespace_uri = "urn:acme:line1"     # default namespace of the nodes below
//! publishing_interval_ms = 500
//!
//! [[edge.opcua.servers.nodes]]
//! name = "speed"
//! browse_path = ["Line1", "Speed"]    # from the Objects folder, names in namespace_uri
//! deadband_percent = 0.5               # of the node's EURange
//!
//! [[edge.opcua.servers.nodes]]
//! name = "good_count"
//! node_id = "s=Line1.GoodCount"        # identifier; the namespace comes from namespace_uri
//! sampling_interval_ms = 100
//! queue_size = 10
//! ```
//!
//! Nodes are named by the namespace URI, never by a bare index: a server
//! may renumber its namespaces when it restarts, and the edge resolves the
//! URI again on every new session.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Message security policy of the secure channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityPolicy {
    /// No security: only for a trusted network or a test.
    #[default]
    None,
    /// `http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256`.
    Basic256sha256,
    /// `...#Aes128_Sha256_RsaOaep`.
    Aes128Sha256Rsaoaep,
    /// `...#Aes256_Sha256_RsaPss`.
    Aes256Sha256Rsapss,
}

impl SecurityPolicy {
    /// The policy's name as OPC UA spells it (the tail of its URI).
    pub fn ua_name(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256Rsaoaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256Rsapss => "Aes256_Sha256_RsaPss",
        }
    }
}

/// Message security mode of the secure channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Neither signed nor encrypted.
    #[default]
    None,
    /// Signed.
    Sign,
    /// Signed and encrypted.
    SignAndEncrypt,
}

/// How the edge identifies its user to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// No user.
    #[default]
    Anonymous,
    /// `username` with a password from `password_env` or `password_file`.
    Username,
    /// An X.509 user certificate (`user_certificate`, `user_private_key`).
    Certificate,
}

/// Subscriptions (the server pushes changes) or cyclic reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Monitored items in a subscription: sampling, queue, deadband.
    #[default]
    Subscription,
    /// A Read of every node each `poll_interval_ms`.
    Polling,
}

/// One node read from a server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcuaNode {
    /// Tag name written into each reading; unique per asset on the server.
    pub name: String,
    /// Asset of the readings; the server's `asset` when absent.
    pub asset: Option<String>,
    /// NodeId: `s=Line1.Speed`, `i=1001`, `g=...`, `b=...` in the node's
    /// namespace (`namespace_uri`), or in full `ns=2;s=...` / `nsu=URI;s=...`.
    pub node_id: Option<String>,
    /// Browse names from the Objects folder to the node, each in the
    /// node's namespace; `URI|Name` names another namespace for one step.
    pub browse_path: Vec<String>,
    /// Namespace URI of this node; the server's `namespace_uri` when absent.
    pub namespace_uri: Option<String>,
    /// Sampling interval asked of the server, ms; the server's default
    /// when absent. The server may revise it; the revised value is used.
    pub sampling_interval_ms: Option<f64>,
    /// Samples the server queues between publishes. Absent: the samples of
    /// one publishing interval plus one (16 for sampling 0), so none is
    /// lost when the server's timers drift.
    pub queue_size: Option<u32>,
    /// Report a change only when it exceeds this absolute amount.
    pub deadband_absolute: Option<f64>,
    /// Report a change only when it exceeds this percentage of the node's
    /// EURange.
    pub deadband_percent: Option<f64>,
    /// Engineering unit written into each reading.
    pub eng_unit: Option<String>,
}

/// An OPC UA server and the nodes read from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcuaServer {
    /// Server name: the readings' `source` is `opcua:<name>`.
    pub name: String,
    /// Endpoint URL, `opc.tcp://host:port/path`.
    pub endpoint: String,
    /// Default asset of its nodes.
    pub asset: String,
    /// Message security policy.
    pub security_policy: SecurityPolicy,
    /// Message security mode; must be `none` exactly when the policy is.
    pub security_mode: SecurityMode,
    /// User identity.
    pub auth: Auth,
    /// User name for `auth = "username"`.
    pub username: String,
    /// Environment variable holding the password (never logged).
    pub password_env: Option<String>,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// User certificate (DER) for `auth = "certificate"`.
    pub user_certificate: Option<PathBuf>,
    /// Its private key (PEM).
    pub user_private_key: Option<PathBuf>,
    /// Client application certificate (DER); with `client_private_key`.
    /// When absent, one is created in the PKI directory on first start.
    pub client_certificate: Option<PathBuf>,
    /// Private key (PEM) of `client_certificate`.
    pub client_private_key: Option<PathBuf>,
    /// PKI directory (own certificate, `trusted/`, `rejected/`); default
    /// `<data_dir>/pki/opcua`.
    pub pki_dir: Option<PathBuf>,
    /// Trust any server certificate. Off by default: a server's certificate
    /// must be in `<pki_dir>/trusted`; a rejected one is written to
    /// `<pki_dir>/rejected` so an operator can move it.
    pub trust_server_certificates: bool,
    /// Check a trusted server certificate's host name (against the
    /// endpoint's), application URI and validity dates.
    pub verify_server_certificates: bool,
    /// Default namespace URI of the nodes.
    pub namespace_uri: Option<String>,
    /// Subscription or polling.
    pub mode: Mode,
    /// Requested publishing interval of the subscription, ms.
    pub publishing_interval_ms: u64,
    /// Cycle of the reads in polling mode, ms.
    pub poll_interval_ms: u64,
    /// Most notifications in one publish response, 1..=50,000: the client
    /// sizes its decoder limits to it.
    pub max_notifications_per_publish: u32,
    /// Monitored items (or reads) per request; the server's
    /// OperationLimits lower it, 0 means "as the server allows".
    pub max_items_per_call: u32,
    /// Time allowed for one request, ms.
    pub request_timeout_ms: u64,
    /// Session timeout asked of the server, ms.
    pub session_timeout_ms: u32,
    /// Longest pause between reconnect attempts, ms.
    pub max_backoff_ms: u64,
    /// The nodes.
    pub nodes: Vec<OpcuaNode>,
}

impl Default for OpcuaServer {
    fn default() -> Self {
        OpcuaServer {
            name: String::new(),
            endpoint: String::new(),
            asset: String::new(),
            security_policy: SecurityPolicy::None,
            security_mode: SecurityMode::None,
            auth: Auth::Anonymous,
            username: String::new(),
            password_env: None,
            password_file: None,
            user_certificate: None,
            user_private_key: None,
            client_certificate: None,
            client_private_key: None,
            pki_dir: None,
            trust_server_certificates: false,
            verify_server_certificates: true,
            namespace_uri: None,
            mode: Mode::Subscription,
            publishing_interval_ms: 1000,
            poll_interval_ms: 1000,
            max_notifications_per_publish: 5_000,
            max_items_per_call: 0,
            request_timeout_ms: 10_000,
            session_timeout_ms: 60_000,
            max_backoff_ms: 30_000,
            nodes: Vec::new(),
        }
    }
}

/// The `[edge.opcua]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpcuaConfig {
    /// Servers to read.
    pub servers: Vec<OpcuaServer>,
}

impl OpcuaConfig {
    /// Checks every server and node; errors name the field, e.g.
    /// `edge.opcua.servers[0].nodes[2].browse_path`.
    pub fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for (s, srv) in self.servers.iter().enumerate() {
            let at = |f: &str| format!("edge.opcua.servers[{s}].{f}");
            if srv.name.is_empty() || !names.insert(srv.name.as_str()) {
                return Err(Error::invalid(
                    at("name"),
                    format!("`{}` is empty or used twice", srv.name),
                ));
            }
            if !srv.endpoint.starts_with("opc.tcp://") {
                return Err(Error::invalid(
                    at("endpoint"),
                    format!(
                        "`{}` is not an opc.tcp:// URL, e.g. opc.tcp://127.0.0.1:4840",
                        srv.endpoint
                    ),
                ));
            }
            let none_policy = srv.security_policy == SecurityPolicy::None;
            let none_mode = srv.security_mode == SecurityMode::None;
            if none_policy != none_mode {
                return Err(Error::invalid(
                    at("security_mode"),
                    "must be `none` exactly when security_policy is `none` (sign or sign_and_encrypt otherwise)",
                ));
            }
            match srv.auth {
                Auth::Anonymous => {}
                Auth::Username => {
                    if srv.username.is_empty() {
                        return Err(Error::invalid(
                            at("username"),
                            "is required with auth = \"username\"",
                        ));
                    }
                    if srv.password_env.is_none() == srv.password_file.is_none() {
                        return Err(Error::invalid(
                            at("password_env"),
                            "give exactly one of password_env and password_file with auth = \"username\"",
                        ));
                    }
                }
                Auth::Certificate => {
                    if srv.user_certificate.is_none() || srv.user_private_key.is_none() {
                        return Err(Error::invalid(
                            at("user_certificate"),
                            "auth = \"certificate\" needs user_certificate and user_private_key",
                        ));
                    }
                }
            }
            if srv.client_certificate.is_some() != srv.client_private_key.is_some() {
                return Err(Error::invalid(
                    at("client_certificate"),
                    "give client_certificate and client_private_key together, or neither (one is created)",
                ));
            }
            if srv.publishing_interval_ms == 0 || srv.poll_interval_ms == 0 {
                return Err(Error::invalid(
                    at("publishing_interval_ms"),
                    "intervals must be > 0",
                ));
            }
            if !(1..=50_000).contains(&srv.max_notifications_per_publish) {
                return Err(Error::invalid(
                    at("max_notifications_per_publish"),
                    "must be 1..=50000 (0, \"no limit\", would let a publish outgrow the decoder)",
                ));
            }
            if srv.request_timeout_ms == 0 || srv.max_backoff_ms == 0 {
                return Err(Error::invalid(
                    at("request_timeout_ms"),
                    "timeouts must be > 0",
                ));
            }
            if srv.nodes.is_empty() {
                return Err(Error::invalid(
                    at("nodes"),
                    "a server needs at least one node",
                ));
            }
            let mut tags = HashSet::new();
            for (n, node) in srv.nodes.iter().enumerate() {
                let at = |f: &str| format!("edge.opcua.servers[{s}].nodes[{n}].{f}");
                let asset = node.asset.as_deref().unwrap_or(&srv.asset);
                if node.name.is_empty() || !tags.insert((asset, node.name.as_str())) {
                    return Err(Error::invalid(
                        at("name"),
                        format!(
                            "`{}` is empty or used twice for asset `{asset}` on the server",
                            node.name
                        ),
                    ));
                }
                match (&node.node_id, node.browse_path.is_empty()) {
                    (Some(_), false) | (None, true) => {
                        return Err(Error::invalid(
                            at("node_id"),
                            "give exactly one of node_id and browse_path",
                        ));
                    }
                    (Some(id), true) => {
                        let full = id.starts_with("ns=") || id.starts_with("nsu=");
                        if !full && node.namespace_uri.is_none() && srv.namespace_uri.is_none() {
                            return Err(Error::invalid(
                                at("node_id"),
                                format!(
                                    "`{id}` has no namespace: set namespace_uri (on the node or the server) or write nsu=URI;{id}"
                                ),
                            ));
                        }
                    }
                    (None, false) => {
                        if node.namespace_uri.is_none() && srv.namespace_uri.is_none() {
                            return Err(Error::invalid(
                                at("namespace_uri"),
                                "a browse_path needs namespace_uri (on the node or the server)",
                            ));
                        }
                        if node.browse_path.iter().any(|p| p.is_empty()) {
                            return Err(Error::invalid(at("browse_path"), "has an empty name"));
                        }
                    }
                }
                if node.deadband_absolute.is_some() && node.deadband_percent.is_some() {
                    return Err(Error::invalid(
                        at("deadband_percent"),
                        "give deadband_absolute or deadband_percent, not both",
                    ));
                }
                if node
                    .deadband_absolute
                    .is_some_and(|d| d.is_nan() || d < 0.0)
                {
                    return Err(Error::invalid(at("deadband_absolute"), "must be >= 0"));
                }
                if node
                    .deadband_percent
                    .is_some_and(|d| !(0.0..=100.0).contains(&d))
                {
                    return Err(Error::invalid(at("deadband_percent"), "must be 0..=100"));
                }
                if node
                    .sampling_interval_ms
                    .is_some_and(|d| d.is_nan() || d < 0.0)
                {
                    return Err(Error::invalid(at("sampling_interval_ms"), "must be >= 0"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> OpcuaServer {
        OpcuaServer {
            name: "line-1".into(),
            endpoint: "opc.tcp://127.0.0.1:4840".into(),
            namespace_uri: Some("urn:test".into()),
            nodes: vec![OpcuaNode {
                name: "speed".into(),
                node_id: Some("s=Speed".into()),
                ..OpcuaNode::default()
            }],
            ..OpcuaServer::default()
        }
    }

    fn field_of(cfg: OpcuaServer) -> String {
        match (OpcuaConfig { servers: vec![cfg] }).validate() {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_server_is_valid() {
        OpcuaConfig {
            servers: vec![server()],
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = server();
        s.security_policy = SecurityPolicy::Basic256sha256;
        assert_eq!(field_of(s), "edge.opcua.servers[0].security_mode");

        let mut s = server();
        s.auth = Auth::Username;
        s.username = "edge".into();
        assert_eq!(field_of(s), "edge.opcua.servers[0].password_env");

        let mut s = server();
        s.namespace_uri = None;
        assert_eq!(field_of(s), "edge.opcua.servers[0].nodes[0].node_id");

        let mut s = server();
        s.nodes[0].browse_path = vec!["Line1".into()];
        assert_eq!(field_of(s), "edge.opcua.servers[0].nodes[0].node_id");

        let mut s = server();
        s.nodes[0].deadband_percent = Some(150.0);
        assert_eq!(
            field_of(s),
            "edge.opcua.servers[0].nodes[0].deadband_percent"
        );

        let mut s = server();
        s.endpoint = "tcp://x:1".into();
        assert_eq!(field_of(s), "edge.opcua.servers[0].endpoint");
    }

    #[test]
    fn a_full_node_id_needs_no_namespace_uri() {
        let mut s = server();
        s.namespace_uri = None;
        s.nodes[0].node_id = Some("nsu=urn:x;s=Speed".into());
        OpcuaConfig { servers: vec![s] }.validate().unwrap();
    }
}
