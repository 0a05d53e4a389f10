//! Warning Events on Nodes whose next-hop annotation pier cannot use
//! (`convert::node_with_next_hop`): one per distinct (node, key, value), so
//! a Node's periodic status updates do not repeat it. The Node watcher sends
//! the problems here and never waits on the API server.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;
use tracing::warn;

use super::convert::NextHopProblem;

/// Event reason on the Node.
pub const REASON: &str = "InvalidNextHopAnnotation";

pub async fn run(client: Client, mut problems: mpsc::UnboundedReceiver<NextHopProblem>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "pier".into(),
            instance: Some(super::openelb::gateway_name()),
        },
    );
    let mut told: BTreeSet<(String, &'static str, String)> = BTreeSet::new();
    while let Some(p) = problems.recv().await {
        if !told.insert((p.node.clone(), p.key, p.value.clone())) {
            continue;
        }
        warn!(node = %p.node, key = p.key, value = %p.value, why = %p.why, "next-hop annotation not used");
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(p.node.clone()),
            ..Default::default()
        };
        let ev = KEvent {
            type_: EventType::Warning,
            reason: REASON.into(),
            note: Some(p.to_string()),
            action: "NextHop".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            warn!(node = %p.node, error = %super::explain(&e), "cannot record Event");
        }
    }
}
