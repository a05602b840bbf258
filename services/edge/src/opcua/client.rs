//! Building an async-opcua client and session from `[[edge.opcua.servers]]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use marktwin_core::opcua::{Auth, OpcuaServer, SecurityMode};
use opcua::client::transport::TcpConnector;
use opcua::client::{ClientBuilder, IdentityToken, Session, SessionEventLoop};
use opcua::types::{EndpointDescription, MessageSecurityMode, UserTokenPolicy};

use crate::error::{Error, Result};

/// Attempts the library makes to get an existing session back (reactivate
/// it, or create a new one and transfer its subscriptions) before the
/// source's own supervisor starts over with a new client. 0.5 s doubling to
/// 5 s: about 17 s, which covers a server restart or a short network cut.
const SESSION_RETRIES: i32 = 6;

/// Chunks of one message: with 64 KiB chunks, 4 MiB, room for a publish of
/// tens of thousands of notifications.
const MAX_CHUNKS: usize = 64;

/// The PKI directory of a server's client: own certificate, `trusted/`,
/// `rejected/`.
pub fn pki_dir(srv: &OpcuaServer, data_dir: &Path) -> PathBuf {
    srv.pki_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("pki").join("opcua"))
}

fn source_err(srv: &OpcuaServer, detail: impl Into<String>) -> Error {
    Error::Source {
        source_name: format!("opcua:{}", srv.name),
        detail: detail.into(),
    }
}

/// The user identity from config; the password is read from its variable
/// or file each time (so a rotated secret is picked up on reconnect) and
/// never logged.
pub fn identity(srv: &OpcuaServer) -> Result<IdentityToken> {
    match srv.auth {
        Auth::Anonymous => Ok(IdentityToken::Anonymous),
        Auth::Username => {
            let password = if let Some(var) = &srv.password_env {
                std::env::var(var).map_err(|_| {
                    source_err(
                        srv,
                        format!("password_env: environment variable `{var}` is not set"),
                    )
                })?
            } else if let Some(file) = &srv.password_file {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    source_err(srv, format!("password_file {}: {e}", file.display()))
                })?;
                text.lines().next().unwrap_or_default().to_string()
            } else {
                return Err(source_err(srv, "auth = \"username\" without a password"));
            };
            Ok(IdentityToken::new_user_name(srv.username.clone(), password))
        }
        Auth::Certificate => {
            let (Some(cert), Some(key)) = (&srv.user_certificate, &srv.user_private_key) else {
                return Err(source_err(
                    srv,
                    "auth = \"certificate\" needs user_certificate and user_private_key",
                ));
            };
            IdentityToken::new_x509_path(cert, key)
                .map_err(|e| source_err(srv, format!("user certificate: {e}")))
        }
    }
}

fn security_mode(mode: SecurityMode) -> MessageSecurityMode {
    match mode {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// A new client, session and event loop for `srv`. Asks the server for its
/// endpoints (so an unreachable server fails here, quickly) and picks the
/// one with the configured policy and mode. Nothing is activated until the
/// event loop is polled.
pub async fn connect(
    srv: &OpcuaServer,
    data_dir: &Path,
) -> Result<(Arc<Session>, SessionEventLoop<TcpConnector>)> {
    let mut builder = ClientBuilder::new()
        .application_name("marktwin edge")
        .application_uri("urn:marktwin:edge")
        .product_uri("urn:marktwin")
        .pki_dir(pki_dir(srv, data_dir))
        .create_sample_keypair(srv.client_certificate.is_none())
        .trust_server_certs(srv.trust_server_certificates)
        .verify_server_certs(srv.verify_server_certificates)
        .session_retry_limit(SESSION_RETRIES)
        .session_retry_initial(Duration::from_millis(500))
        .session_retry_max(Duration::from_millis(srv.max_backoff_ms.min(5_000)))
        .request_timeout(Duration::from_millis(srv.request_timeout_ms))
        .session_timeout(srv.session_timeout_ms)
        .session_name(format!("marktwin edge {}", srv.name))
        .recreate_subscriptions(true);
    let chunk = if srv.max_items_per_call == 0 {
        1_000
    } else {
        srv.max_items_per_call as usize
    };
    // async-opcua decodes at most 1,000 array elements and 5 chunks of 64 KiB
    // by default: a publish response with more notifications than that
    // fails to decode and its samples never arrive (found with 1,500 items
    // against asyncua). Allow every node and the largest publish, and a
    // message to match.
    let array = (srv.max_notifications_per_publish as usize)
        .max(srv.nodes.len())
        .max(1_000);
    builder = builder
        .recreate_monitored_items_chunk(chunk)
        .max_array_length(array)
        .max_chunk_count(MAX_CHUNKS)
        .max_message_size(MAX_CHUNKS * 65_535);
    if let (Some(cert), Some(key)) = (&srv.client_certificate, &srv.client_private_key) {
        builder = builder.certificate_path(cert).private_key_path(key);
    }
    let mut client = builder
        .client()
        .map_err(|e| source_err(srv, format!("client configuration: {}", e.join("; "))))?;
    let policy_uri = format!(
        "http://opcfoundation.org/UA/SecurityPolicy#{}",
        srv.security_policy.ua_name()
    );
    let endpoint: EndpointDescription = (
        srv.endpoint.as_str(),
        policy_uri.as_str(),
        security_mode(srv.security_mode),
        UserTokenPolicy::anonymous(),
    )
        .into();
    let token = identity(srv)?;
    client
        .connect_to_matching_endpoint(endpoint, token)
        .await
        .map_err(|e| {
            source_err(
                srv,
                format!(
                    "no session with {} ({} / {:?}): {e}",
                    srv.endpoint,
                    srv.security_policy.ua_name(),
                    srv.security_mode
                ),
            )
        })
}
