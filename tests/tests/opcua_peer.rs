//! The OPC UA connector against an OPC UA server we did not write (Python
//! asyncua, `tests/peers/opcua_server.py`):
//!
//! - SignAndEncrypt with a username: samples flow to the telemetry topic
//!   with their status kept (Uncertain and Bad samples are flagged, not
//!   dropped); an unknown node is reported and skipped; a percent deadband
//!   is applied through the node's EURange;
//! - the peer is killed and restarted with its namespaces renumbered, and
//!   samples resume with no action, from the right nodes;
//! - a wrong password gives a clear reason;
//! - every security policy and mode, anonymous and certificate users;
//! - 1,500 monitored items against a server taking 400 per call;
//! - polling mode.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use marktwin::app::Running;
use marktwin_core::Config;
use marktwin_core::events::{Envelope, Quality, TelemetryReading};
use marktwin_core::health::Readiness;
use marktwin_core::opcua::{Auth, Mode, OpcuaNode, OpcuaServer, SecurityMode, SecurityPolicy};
use marktwin_edge::opcua::client;
use marktwin_kafka::EmbeddedBroker;
use marktwin_tests::{Peer, free_port, telemetry_on};
use opcua::types::{AttributeId, NodeId, ReadValueId, TimestampsToReturn};

const NS: &str = "urn:marktwin:test:line";

fn node(name: &str, id: &str) -> OpcuaNode {
    OpcuaNode {
        name: name.into(),
        node_id: Some(id.into()),
        ..OpcuaNode::default()
    }
}

fn server(port: u16, dir: &Path) -> OpcuaServer {
    OpcuaServer {
        name: "peer".into(),
        endpoint: format!("opc.tcp://127.0.0.1:{port}/"),
        asset: "line-1".into(),
        namespace_uri: Some(NS.into()),
        trust_server_certificates: true,
        pki_dir: Some(dir.join("pki")),
        publishing_interval_ms: 100,
        max_backoff_ms: 1_000,
        nodes: vec![node("good_count", "s=Line1.GoodCount")],
        ..OpcuaServer::default()
    }
}

fn with_password(mut srv: OpcuaServer, dir: &Path, password: &str) -> OpcuaServer {
    let file = dir.join(format!("password-{password}"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    srv.auth = Auth::Username;
    srv.username = "edge".into();
    srv.password_file = Some(file);
    srv
}

/// The asyncua peer on a free port, its certificate kept under `dir`.
fn peer(dir: &Path, extra: &[&str]) -> (Peer, u16) {
    let port = free_port();
    let port_s = port.to_string();
    let certs = dir.join("peer");
    let mut args = vec![port_s.as_str(), certs.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Peer::start("opcua_server.py", &args), port)
}

/// Broker, then an edge-only `marktwin` reading `servers`.
async fn start_edge(dir: &Path, servers: Vec<OpcuaServer>) -> (EmbeddedBroker, Running, Config) {
    marktwin_tests::start_edge(dir, |c| c.edge.opcua.servers = servers).await
}

/// Stops the edge, reads the telemetry topic to its end, stops the broker.
async fn collect(
    broker: EmbeddedBroker,
    running: Running,
    cfg: &Config,
) -> Vec<Envelope<TelemetryReading>> {
    running.shutdown().await;
    let envs = telemetry_on(broker.bootstrap(), cfg.topic_name("telemetry")).await;
    broker.stop().await;
    envs
}

/// Waits until readiness check `name` is `want` with a reason containing
/// `text`; returns the reason.
async fn wait_ready(r: &Readiness, name: &str, want: bool, text: &str) -> String {
    for _ in 0..600 {
        if let Some((_, _, why)) = r
            .report()
            .into_iter()
            .find(|(n, ok, why)| n == name && *ok == want && why.contains(text))
        {
            return why;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want} with `{text}`: {:?}", r.report());
}

fn readings<'a>(envs: &'a [Envelope<TelemetryReading>], tag: &str) -> Vec<&'a TelemetryReading> {
    let mut v: Vec<&TelemetryReading> = envs
        .iter()
        .map(|e| &e.payload)
        .filter(|p| p.tag == tag)
        .collect();
    v.sort_by_key(|p| p.source_time_ms);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_with_a_username_survives_a_peer_restart_with_renumbered_namespaces() {
    let port = free_port();
    let port_s = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("peer");
    let certs_s = certs.to_str().unwrap();
    let peer = Peer::start("opcua_server.py", &[&port_s, certs_s]);

    let mut srv = with_password(server(port, dir.path()), dir.path(), "s3cret");
    srv.security_policy = SecurityPolicy::Basic256sha256;
    srv.security_mode = SecurityMode::SignAndEncrypt;
    srv.nodes = vec![
        node("good_count", "s=Line1.GoodCount"),
        OpcuaNode {
            name: "speed".into(),
            browse_path: vec!["Line1".into(), "Speed".into()],
            eng_unit: Some("packs/min".into()),
            ..OpcuaNode::default()
        },
        node("temp", "s=Line1.Temp"),
        node("state", "s=Line1.State"),
        node("step_fine", "s=Line1.Step"),
        OpcuaNode {
            deadband_percent: Some(1.0),
            ..node("step_coarse", "s=Line1.Step")
        },
        node("missing", "s=Line1.NoSuchNode"),
    ];
    for n in &mut srv.nodes {
        n.sampling_interval_ms = Some(100.0);
    }
    let (broker, running, cfg) = start_edge(dir.path(), vec![srv]).await;
    let check = "source_opcua:peer";
    let why = wait_ready(&running.readiness, check, true, "reads").await;
    assert!(
        why.contains("missing (BadNodeIdUnknown)"),
        "the bad node is named: {why}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let killed_at = marktwin_core::now_ms();
    peer.kill();
    wait_ready(&running.readiness, check, false, "").await;
    // Same certificate and port, but another namespace registered first:
    // the line's namespace index moves from 2 to 3.
    let _peer = Peer::start("opcua_server.py", &[&port_s, certs_s, "--shift"]);
    wait_ready(&running.readiness, check, true, "reads").await;
    let back_at = marktwin_core::now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let envs = collect(broker, running, &cfg).await;

    assert!(
        envs.iter()
            .all(|e| e.source == "opcua:peer" && e.key == "line-1")
    );
    let count = readings(&envs, "good_count");
    let before = count
        .iter()
        .filter(|r| r.source_time_ms.unwrap() < killed_at)
        .count();
    let after = count
        .iter()
        .filter(|r| r.source_time_ms.unwrap() > back_at)
        .count();
    eprintln!(
        "good_count: {} readings, {before} before the kill, {after} after the restart",
        count.len()
    );
    assert!(before >= 10, "samples flow before the kill: {before}");
    assert!(
        after >= 5,
        "samples resume after the restart from the renumbered namespace: {after}"
    );
    assert!(
        count
            .iter()
            .all(|r| r.quality == Quality::Good && r.server_time_ms.is_some() && r.value.is_some())
    );

    let temp = readings(&envs, "temp");
    let q: BTreeMap<String, usize> = temp.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!("{:?}", r.quality)).or_default() += 1;
        m
    });
    eprintln!("temp qualities: {q:?}");
    assert!(
        q.len() == 3,
        "Good, Uncertain and Bad samples are all kept: {q:?}"
    );
    assert!(
        temp.iter()
            .filter(|r| r.quality == Quality::Bad)
            .all(|r| r.status_code == Some(opcua::types::StatusCode::BadSensorFailure.bits()))
    );

    let speed = readings(&envs, "speed");
    assert!(speed.len() >= 10, "browse path resolved: {}", speed.len());
    assert_eq!(speed[0].eng_unit.as_deref(), Some("packs/min"));
    assert_eq!(readings(&envs, "state")[0].text.as_deref(), Some("running"));
    assert!(readings(&envs, "missing").is_empty());

    // 1 % of EURange 0..1000 is an absolute deadband of 10: the peer steps
    // by 1 and by 50 every tenth step, so only the big steps pass.
    let fine = readings(&envs, "step_fine");
    let coarse = readings(&envs, "step_coarse");
    eprintln!("step: {} fine, {} coarse", fine.len(), coarse.len());
    assert!(
        fine.windows(2)
            .any(|w| (w[1].value.unwrap() - w[0].value.unwrap()).abs() < 2.0)
    );
    assert!(coarse.len() * 3 < fine.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = peer(dir.path(), &[]);
    let mut srv = with_password(server(port, dir.path()), dir.path(), "wrong");
    srv.security_policy = SecurityPolicy::Aes256Sha256Rsapss;
    srv.security_mode = SecurityMode::SignAndEncrypt;
    let (broker, running, _cfg) = start_edge(dir.path(), vec![srv]).await;
    let why = wait_ready(
        &running.readiness,
        "source_opcua:peer",
        false,
        "BadUserAccessDenied",
    )
    .await;
    eprintln!("{why}");
    assert!(why.contains("user `edge`"), "{why}");
    assert!(!why.contains("wrong"), "the password is never shown: {why}");
    running.shutdown().await;
    broker.stop().await;
}

/// Connects with `srv` and reads GoodCount once.
async fn read_once(srv: &OpcuaServer, data_dir: &Path) -> Result<f64, String> {
    marktwin_tests::log_to_test_output();
    let (session, event_loop) = client::connect(srv, data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let handle = event_loop.spawn();
    let result = async {
        if !tokio::time::timeout(Duration::from_secs(20), session.wait_for_connection())
            .await
            .map_err(|_| "no session within 20 s".to_string())?
        {
            return Err("session failed".to_string());
        }
        let ns = session
            .get_namespace_index(NS)
            .await
            .map_err(|e| e.to_string())?;
        let v = session
            .read(
                &[ReadValueId {
                    node_id: NodeId::new(ns, "Line1.GoodCount"),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                }],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .map_err(|e| e.to_string())?;
        v[0].value
            .as_ref()
            .and_then(|v| v.as_f64())
            .ok_or_else(|| "no value".to_string())
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
    handle.abort();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_security_policy_and_user_token_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = peer(dir.path(), &[]);
    let base = server(port, dir.path());
    use SecurityMode::{Sign, SignAndEncrypt};
    use SecurityPolicy::{Aes128Sha256Rsaoaep, Aes256Sha256Rsapss, Basic256sha256};
    let combos = [
        (SecurityPolicy::None, SecurityMode::None),
        (Basic256sha256, Sign),
        (Basic256sha256, SignAndEncrypt),
        (Aes128Sha256Rsaoaep, Sign),
        (Aes128Sha256Rsaoaep, SignAndEncrypt),
        (Aes256Sha256Rsapss, Sign),
        (Aes256Sha256Rsapss, SignAndEncrypt),
    ];
    for (policy, mode) in combos {
        let srv = OpcuaServer {
            security_policy: policy,
            security_mode: mode,
            ..base.clone()
        };
        let v = read_once(&srv, dir.path()).await;
        eprintln!("{policy:?} {mode:?}: {v:?}");
        assert!(v.is_ok(), "{policy:?} / {mode:?}: {v:?}");
    }
    // The client certificate was created on the first connect.
    let pki = client::pki_dir(&base, dir.path());
    let own = pki.join("own").join("cert.der");
    let key = pki.join("private").join("private.pem");
    assert!(
        own.exists() && key.exists(),
        "client keypair in {}",
        pki.display()
    );

    // Username and certificate users over SignAndEncrypt.
    let secure = OpcuaServer {
        security_policy: Basic256sha256,
        security_mode: SignAndEncrypt,
        ..base.clone()
    };
    let user = with_password(secure.clone(), dir.path(), "s3cret");
    assert!(read_once(&user, dir.path()).await.is_ok());
    let cert_user = OpcuaServer {
        auth: Auth::Certificate,
        user_certificate: Some(own),
        user_private_key: Some(key),
        ..secure
    };
    let v = read_once(&cert_user, dir.path()).await;
    assert!(v.is_ok(), "certificate user: {v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_items_are_created_in_chunks_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (peer, port) = peer(
        dir.path(),
        &["--bulk", "1500", "--max-items-per-call", "400"],
    );
    let mut srv = server(port, dir.path());
    srv.publishing_interval_ms = 500;
    srv.nodes = (0..1500)
        .map(|i| node(&format!("b{i:04}"), &format!("s=Bulk.{i:04}")))
        .collect();
    let (broker, running, cfg) = start_edge(dir.path(), vec![srv]).await;
    wait_ready(
        &running.readiness,
        "source_opcua:peer",
        true,
        "reads 1500 nodes",
    )
    .await;
    // Every item's initial value arrives.
    let mut tags = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tags = peer
            .output()
            .iter()
            .filter_map(|l| l.strip_prefix("CREATE_ITEMS "))
            .map(|n| n.parse::<usize>().unwrap())
            .sum();
        if tags == 1500 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls: Vec<String> = peer.output();
    eprintln!("{calls:?}");
    assert_eq!(tags, 1500, "all items created: {calls:?}");
    assert!(calls.iter().all(|l| !l.starts_with("REFUSED_ITEMS")));
    let envs = collect(broker, running, &cfg).await;
    let seen: std::collections::BTreeSet<&str> =
        envs.iter().map(|e| e.payload.tag.as_str()).collect();
    eprintln!(
        "{} readings of {} tags, first {:?}, last {:?}",
        envs.len(),
        seen.len(),
        seen.first(),
        seen.last()
    );
    assert_eq!(seen.len(), 1500, "a value from every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_reads_every_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = peer(dir.path(), &[]);
    let mut srv = server(port, dir.path());
    srv.mode = Mode::Polling;
    srv.poll_interval_ms = 200;
    srv.nodes.push(node("temp", "s=Line1.Temp"));
    let (broker, running, cfg) = start_edge(dir.path(), vec![srv]).await;
    wait_ready(
        &running.readiness,
        "source_opcua:peer",
        true,
        "reads 2 nodes",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let envs = collect(broker, running, &cfg).await;
    let count = readings(&envs, "good_count");
    eprintln!("polled good_count {} times", count.len());
    assert!(count.len() >= 5, "{}", count.len());
    assert!(
        count
            .windows(2)
            .all(|w| w[1].value.unwrap() > w[0].value.unwrap()),
        "each cycle reads a new value"
    );
    assert!(
        readings(&envs, "temp")
            .iter()
            .any(|r| r.quality != Quality::Good),
        "non-Good reads are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_is_refused_until_its_certificate_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = peer(dir.path(), &[]);
    let srv = OpcuaServer {
        security_policy: SecurityPolicy::Basic256sha256,
        security_mode: SecurityMode::SignAndEncrypt,
        trust_server_certificates: false,
        ..server(port, dir.path())
    };
    let refused = read_once(&srv, dir.path()).await;
    eprintln!("untrusted: {refused:?}");
    assert!(refused.is_err(), "an unknown server certificate is refused");

    // The operator's step: move the rejected certificate to trusted/.
    let pki = client::pki_dir(&srv, dir.path());
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "the server's certificate waits in rejected/"
    );
    let name = rejected[0].file_name().unwrap();
    std::fs::rename(&rejected[0], pki.join("trusted").join(name)).unwrap();
    let v = read_once(&srv, dir.path()).await;
    assert!(v.is_ok(), "trusted now: {v:?}");
}

/// Kills the client side of every TCP connection to `port` (`ss -K`, which
/// needs root and a kernel with socket destroy); false when it cannot.
fn cut_connections_to(port: u16) -> bool {
    std::process::Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &format!(":{port}")])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ESTAB"))
}

/// The network drops the connection while the server keeps running: the
/// client opens a new secure channel and reactivates its session, so the
/// subscription (and its monitored items) carries on without being made
/// anew, and readings resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_reactivates_the_session_and_readings_resume() {
    marktwin_tests::log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let (_peer, port) = peer(dir.path(), &[]);
    let (broker, running, cfg) = start_edge(dir.path(), vec![server(port, dir.path())]).await;
    wait_ready(
        &running.readiness,
        "source_opcua:peer",
        true,
        "reads 1 node",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reactivated =
        r#"marktwin_edge_source_reconnects_total{how="reactivated",source="opcua:peer"}"#;
    let before = marktwin_tests::metric(running.http_addr, reactivated).await;
    if !cut_connections_to(port) {
        eprintln!("SKIPPED: `ss -K` cannot cut connections here (needs root and socket destroy)");
        collect(broker, running, &cfg).await;
        return;
    }
    let cut_ms = marktwin_core::now_ms();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while marktwin_tests::metric(running.http_addr, reactivated).await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session was reactivated after the cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_sessions = marktwin_tests::metric(
        running.http_addr,
        r#"marktwin_edge_source_reconnects_total{how="new_session",source="opcua:peer"}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let envs = collect(broker, running, &cfg).await;
    let after: Vec<_> = readings(&envs, "good_count")
        .into_iter()
        .filter(|r| r.source_time_ms.unwrap_or_default() > cut_ms + 500)
        .collect();
    let all = readings(&envs, "good_count");
    eprintln!(
        "{} readings after the cut; {new_sessions} new sessions; last reading {} ms after the cut, {} in all",
        after.len(),
        all.last()
            .and_then(|r| r.source_time_ms)
            .unwrap_or_default()
            - cut_ms,
        all.len()
    );
    assert!(after.len() >= 5, "readings resumed: {}", after.len());
    assert_eq!(new_sessions, 0.0, "the session was kept, not made anew");
}
