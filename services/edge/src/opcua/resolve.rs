//! From configured nodes (namespace URI + identifier, or browse path) to
//! the NodeIds of this session, and the server's operation limits.
//!
//! Done on every new session: a restarted server may have renumbered its
//! namespaces, so an index remembered from the last session can be wrong.

use std::str::FromStr;

use marktwin_core::opcua::{OpcuaNode, OpcuaServer};
use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowsePath, DataValue, NamespaceMap, NodeId, ObjectId, QualifiedName, Range,
    ReadValueId, ReferenceTypeId, RelativePath, RelativePathElement, TimestampsToReturn,
    VariableId, Variant,
};

/// What the server allows per call (0 in the server means "no limit"; here
/// that becomes our own ceiling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Monitored items per CreateMonitoredItems.
    pub items_per_call: usize,
    /// Nodes per Read.
    pub nodes_per_read: usize,
    /// Browse paths per TranslateBrowsePathsToNodeIds.
    pub paths_per_translate: usize,
}

/// Our ceiling where the server sets none: large requests are slow to
/// encode and risk the message size limit.
const DEFAULT_LIMIT: usize = 1_000;

fn limit(server: Option<u32>, configured: u32) -> usize {
    let server = server.filter(|&n| n > 0).map(|n| n as usize);
    let configured = (configured > 0).then_some(configured as usize);
    match (server, configured) {
        (Some(s), Some(c)) => s.min(c),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => DEFAULT_LIMIT,
    }
}

/// A read of the Value attribute of `node_id`.
pub(crate) fn value_id(node_id: NodeId) -> ReadValueId {
    ReadValueId {
        node_id,
        attribute_id: AttributeId::Value as u32,
        ..Default::default()
    }
}

/// Reads the server's OperationLimits; a server without them gets our
/// defaults.
pub async fn read_limits(session: &Session, srv: &OpcuaServer) -> Limits {
    let ids = [
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds,
    ];
    let read: Vec<ReadValueId> = ids.iter().map(|&v| value_id(v.into())).collect();
    let values = session
        .read(&read, TimestampsToReturn::Neither, 0.0)
        .await
        .unwrap_or_default();
    let get = |i: usize| -> Option<u32> {
        values
            .get(i)
            .and_then(|dv| dv.value.as_ref())
            .and_then(|v| v.as_f64())
            .map(|n| n as u32)
    };
    Limits {
        items_per_call: limit(get(0), srv.max_items_per_call),
        nodes_per_read: limit(get(1), srv.max_items_per_call),
        paths_per_translate: limit(get(2), 0),
    }
}

/// One configured node as found on the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Index into the server's `nodes`.
    pub index: usize,
    /// The node in this session's namespace numbering.
    pub node_id: NodeId,
    /// Absolute deadband to ask for: the configured one, or the percent
    /// one converted through the node's EURange.
    pub deadband: Option<f64>,
}

/// The outcome of resolving all nodes: the good ones, and for each bad one
/// its index and why (reported and skipped, never fatal for the others).
#[derive(Debug, Default)]
pub struct Resolution {
    /// Nodes found.
    pub nodes: Vec<Resolved>,
    /// Nodes not found, with the reason.
    pub failures: Vec<(usize, String)>,
}

fn namespace_of<'a>(node: &'a OpcuaNode, srv: &'a OpcuaServer) -> Option<&'a str> {
    node.namespace_uri
        .as_deref()
        .or(srv.namespace_uri.as_deref())
}

/// Parses a configured `node_id` against the session's namespaces.
pub fn parse_node_id(
    text: &str,
    default_uri: Option<&str>,
    ns: &NamespaceMap,
) -> Result<NodeId, String> {
    let (uri, rest) = match text.strip_prefix("nsu=") {
        Some(tail) => {
            let (uri, rest) = tail
                .split_once(';')
                .ok_or_else(|| format!("`{text}`: nsu=URI must be followed by ;s=, ;i=, ..."))?;
            (Some(uri), rest)
        }
        None if text.starts_with("ns=") => {
            return NodeId::from_str(text).map_err(|_| format!("`{text}` is not a NodeId"));
        }
        None => (default_uri, text),
    };
    let uri = uri.ok_or_else(|| format!("`{text}` has no namespace URI"))?;
    let index = ns
        .get_index(uri)
        .ok_or_else(|| format!("namespace `{uri}` is not in the server's NamespaceArray"))?;
    let mut id = NodeId::from_str(rest).map_err(|_| format!("`{text}` is not a NodeId"))?;
    id.namespace = index;
    Ok(id)
}

fn browse_path(
    start: NodeId,
    names: &[String],
    default_uri: Option<&str>,
    ns: &NamespaceMap,
) -> Result<BrowsePath, String> {
    let mut elements = Vec::with_capacity(names.len());
    for name in names {
        let (uri, local) = match name.rsplit_once('|') {
            Some((uri, local)) => (Some(uri), local),
            None => (default_uri, name.as_str()),
        };
        let uri = uri.ok_or_else(|| format!("`{name}` has no namespace URI"))?;
        let index = ns
            .get_index(uri)
            .ok_or_else(|| format!("namespace `{uri}` is not in the server's NamespaceArray"))?;
        elements.push(RelativePathElement {
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            is_inverse: false,
            include_subtypes: true,
            target_name: QualifiedName::new(index, local),
        });
    }
    Ok(BrowsePath {
        starting_node: start,
        relative_path: RelativePath {
            elements: Some(elements),
        },
    })
}

/// Translates browse paths in chunks; one result per path, in order.
async fn translate(
    session: &Session,
    paths: &[BrowsePath],
    chunk: usize,
) -> Result<Vec<Result<NodeId, String>>, String> {
    let mut out = Vec::with_capacity(paths.len());
    for part in paths.chunks(chunk.max(1)) {
        let results = session
            .translate_browse_paths_to_node_ids(part)
            .await
            .map_err(|e| format!("TranslateBrowsePathsToNodeIds failed: {e}"))?;
        for (i, _) in part.iter().enumerate() {
            let r = match results.get(i) {
                None => Err("the server returned no result".to_string()),
                Some(r) if !r.status_code.is_good() => Err(format!("{}", r.status_code)),
                Some(r) => match r.targets.as_ref().and_then(|t| t.first()) {
                    Some(t) => Ok(t.target_id.node_id.clone()),
                    None => Err("no target".to_string()),
                },
            };
            out.push(r);
        }
    }
    Ok(out)
}

/// The EURange of a value, when the node has one.
fn range_of(dv: &DataValue) -> Option<(f64, f64)> {
    match dv.value.as_ref()? {
        Variant::ExtensionObject(obj) => obj.inner_as::<Range>().map(|r| (r.low, r.high)),
        _ => None,
    }
}

/// Resolves every configured node of `srv` in this session. Fails as a
/// whole only when the server cannot be asked at all.
pub async fn resolve(
    session: &Session,
    srv: &OpcuaServer,
    limits: Limits,
) -> Result<Resolution, String> {
    let ns = session
        .read_namespace_array()
        .await
        .map_err(|e| format!("cannot read the NamespaceArray: {e}"))?;
    let mut found: Vec<Option<NodeId>> = vec![None; srv.nodes.len()];
    let mut failures = Vec::new();
    let mut paths = Vec::new();
    let mut path_of = Vec::new();
    for (i, node) in srv.nodes.iter().enumerate() {
        let uri = namespace_of(node, srv);
        match &node.node_id {
            Some(text) => match parse_node_id(text, uri, &ns) {
                Ok(id) => found[i] = Some(id),
                Err(e) => failures.push((i, e)),
            },
            None => {
                match browse_path(ObjectId::ObjectsFolder.into(), &node.browse_path, uri, &ns) {
                    Ok(p) => {
                        paths.push(p);
                        path_of.push(i);
                    }
                    Err(e) => failures.push((i, e)),
                }
            }
        }
    }
    for (r, &i) in translate(session, &paths, limits.paths_per_translate)
        .await?
        .into_iter()
        .zip(&path_of)
    {
        match r {
            Ok(id) => found[i] = Some(id),
            Err(e) => failures.push((
                i,
                format!(
                    "browse path {} not found: {e}",
                    srv.nodes[i].browse_path.join("/")
                ),
            )),
        }
    }

    // Percent deadbands need the node's EURange.
    let percent: Vec<usize> = (0..srv.nodes.len())
        .filter(|&i| srv.nodes[i].deadband_percent.is_some() && found[i].is_some())
        .collect();
    let range_paths: Vec<BrowsePath> = percent
        .iter()
        .map(|&i| BrowsePath {
            starting_node: found[i].clone().unwrap_or_default(),
            relative_path: RelativePath {
                elements: Some(vec![RelativePathElement {
                    reference_type_id: ReferenceTypeId::HasProperty.into(),
                    is_inverse: false,
                    include_subtypes: true,
                    target_name: QualifiedName::new(0, "EURange"),
                }]),
            },
        })
        .collect();
    let range_ids = translate(session, &range_paths, limits.paths_per_translate).await?;
    let mut ranges = vec![None; srv.nodes.len()];
    let reads: Vec<(usize, ReadValueId)> = percent
        .iter()
        .zip(range_ids)
        .filter_map(|(&i, r)| r.ok().map(|id| (i, value_id(id))))
        .collect();
    for part in reads.chunks(limits.nodes_per_read.max(1)) {
        let ids: Vec<ReadValueId> = part.iter().map(|(_, r)| r.clone()).collect();
        let values = session
            .read(&ids, TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("cannot read EURange: {e}"))?;
        for ((i, _), dv) in part.iter().zip(values) {
            ranges[*i] = range_of(&dv);
        }
    }

    let mut nodes = Vec::new();
    for (i, id) in found.into_iter().enumerate() {
        let Some(node_id) = id else { continue };
        let node = &srv.nodes[i];
        let deadband = match (node.deadband_absolute, node.deadband_percent) {
            (Some(abs), _) => Some(abs),
            (None, Some(pct)) => match ranges[i] {
                Some((low, high)) => Some(pct / 100.0 * (high - low).abs()),
                None => {
                    failures.push((
                        i,
                        "deadband_percent needs an EURange property, and the node has none"
                            .to_string(),
                    ));
                    continue;
                }
            },
            (None, None) => None,
        };
        nodes.push(Resolved {
            index: i,
            node_id,
            deadband,
        });
    }
    failures.sort_by_key(|(i, _)| *i);
    Ok(Resolution { nodes, failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> NamespaceMap {
        let mut ns = NamespaceMap::new();
        ns.add_namespace("http://opcfoundation.org/UA/");
        ns.add_namespace("urn:other");
        ns.add_namespace("urn:line");
        ns
    }

    #[test]
    fn node_ids_take_the_index_of_their_uri() {
        let ns = namespaces();
        let id = parse_node_id("s=Line1.Speed", Some("urn:line"), &ns).unwrap();
        assert_eq!(id, NodeId::new(2, "Line1.Speed"));
        let id = parse_node_id("nsu=urn:other;i=1001", None, &ns).unwrap();
        assert_eq!(id, NodeId::new(1, 1001u32));
        let id = parse_node_id("ns=5;s=X", Some("urn:line"), &ns).unwrap();
        assert_eq!(id, NodeId::new(5, "X"));
    }

    #[test]
    fn unknown_namespaces_and_bad_ids_are_named() {
        let ns = namespaces();
        let e = parse_node_id("s=X", Some("urn:missing"), &ns).unwrap_err();
        assert!(e.contains("urn:missing"), "{e}");
        let e = parse_node_id("q=X", Some("urn:line"), &ns).unwrap_err();
        assert!(e.contains("q=X"), "{e}");
    }

    #[test]
    fn limits_take_the_lower_of_server_and_config() {
        assert_eq!(limit(Some(500), 0), 500);
        assert_eq!(limit(Some(0), 0), DEFAULT_LIMIT);
        assert_eq!(limit(None, 200), 200);
        assert_eq!(limit(Some(500), 200), 200);
        assert_eq!(limit(Some(100), 200), 100);
    }

    #[test]
    fn browse_path_steps_can_name_another_namespace() {
        let ns = namespaces();
        let p = browse_path(
            ObjectId::ObjectsFolder.into(),
            &["Line1".into(), "urn:other|Speed".into()],
            Some("urn:line"),
            &ns,
        )
        .unwrap();
        let el = p.relative_path.elements.unwrap();
        assert_eq!(el[0].target_name, QualifiedName::new(2, "Line1"));
        assert_eq!(el[1].target_name, QualifiedName::new(1, "Speed"));
    }
}
