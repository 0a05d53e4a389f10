//! More of the real `pier` binary against the wire-compatible test API
//! server: API server restarts and dropped watches while Services are
//! created, dual-stack status, IP sharing, one Event for an invalid
//! annotation, adoption conflicts at start-up, losing the lease, and
//! 10,000 Services. Every test asserts the effect through the API server:
//! the status written, the Events listed, the request log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::{json, Value};

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/kube.rs"]
mod kube;
#[path = "common/wait.rs"]
mod wait;
use daemon::Pier;
use kube::{
    events, holder, ingress, ips, lb, lb_ports, pier_service, pool, service_requests, socket,
    status_path, status_writes_to, PierConfig, POOL_DUAL,
};
use wait::until;

fn config(dir: &Path, name: &str, kubeconfig: &Path, lease: (u32, u32), pools: &[&str]) -> PathBuf {
    PierConfig {
        name,
        lease,
        pools: pool("public", pools, ""),
        ..Default::default()
    }
    .write(dir, kubeconfig)
}

const POOL: &[&str] = POOL_DUAL;

async fn setup() -> (TestApiServer, tempfile::TempDir, PathBuf) {
    kube::setup(ServerOptions::default()).await
}

/// 1. The API server restarts, drops its watches, and goes away for a
///    moment while Services are being created: pier resumes, every new
///    Service gets an IP, the old ones keep theirs, and nothing is written
///    to the status of a Service whose IP did not change.
#[tokio::test(flavor = "multi_thread")]
async fn api_restart_and_dropped_watches_while_creating_services() {
    let (api, dir, kc) = setup().await;
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));
    for i in 0..10 {
        api.create(lb(&format!("old{i}"), json!({}))).unwrap();
    }
    let before: Vec<Vec<String>> = until("10 Services allocated", || {
        let all: Vec<Vec<String>> = (0..10).map(|i| ips(&api, &format!("old{i}"))).collect();
        all.iter().all(|v| v.len() == 1).then_some(all)
    })
    .await;
    // Once their IPAllocated Events are there (they follow the status
    // writes), watch only what happens from here.
    until("10 IPAllocated events", || {
        (0..10)
            .all(|i| !events(&api, "IPAllocated", &format!("old{i}")).is_empty())
            .then_some(())
    })
    .await;
    api.clear_requests();

    // Services keep coming while the server misbehaves in every way. After
    // each fault that ends pier's watches, the Service created next can
    // only reach pier through a new watch (or list): waiting for its IP
    // proves pier came back from that fault, whatever its backoff.
    let mut recoveries = 0;
    for i in 0..40 {
        let ends_watch = match i {
            5 => {
                api.drop_watches();
                true
            }
            12 => {
                api.restart();
                true
            }
            // An outage during which the history is compacted: the watch
            // comes back with 410 Gone and lists again.
            18 => {
                api.set_available(false);
                false
            }
            22 => {
                api.compact();
                false
            }
            24 => {
                api.set_available(true);
                true
            }
            // Compacted while a watch runs, then the watch ends.
            30 => {
                api.compact();
                false
            }
            32 => {
                api.drop_watches();
                true
            }
            36 => {
                api.restart();
                true
            }
            _ => false,
        };
        let name = format!("new{i:02}");
        api.create(lb(&name, json!({}))).unwrap();
        if ends_watch {
            until(&format!("{name} allocated after the fault"), || {
                (ips(&api, &name).len() == 1).then_some(())
            })
            .await;
            recoveries += 1;
        }
        // Pacing, not waiting: the Services keep coming across the faults.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let new: Vec<Vec<String>> = until("40 new Services allocated", || {
        let all: Vec<Vec<String>> = (0..40).map(|i| ips(&api, &format!("new{i:02}"))).collect();
        all.iter().all(|v| v.len() == 1).then_some(all)
    })
    .await;
    // The watches came back after each fault, and a 410 made pier list.
    let watches = api.count_requests(|r| r.verb == "watch" && r.path == "/api/v1/services");
    assert!(
        watches >= recoveries,
        "pier should have watched again after each of {recoveries} faults ({watches})"
    );
    let lists =
        api.count_requests(|r| r.verb == "list" && r.path == "/api/v1/services" && r.status == 200);
    assert!(lists >= 1, "pier should have relisted Services ({lists})");

    // Quiet again (every IPAllocated Event written): a last relist must
    // change nothing either. A Service created after it reaches pier
    // through the new watch, after whatever the relist brought.
    until("40 IPAllocated events", || {
        (0..40)
            .all(|i| !events(&api, "IPAllocated", &format!("new{i:02}")).is_empty())
            .then_some(())
    })
    .await;
    let watches = service_requests(&api, "watch");
    api.drop_watches();
    until("the watch again", || {
        (service_requests(&api, "watch") > watches).then_some(())
    })
    .await;
    api.create(lb("last", json!({}))).unwrap();
    until("a Service created after the last relist allocated", || {
        (ips(&api, "last").len() == 1).then_some(())
    })
    .await;

    let after: Vec<Vec<String>> = (0..10).map(|i| ips(&api, &format!("old{i}"))).collect();
    assert_eq!(before, after, "an existing Service changed IP");
    for i in 0..10 {
        assert_eq!(
            status_writes_to(&api, &format!("old{i}")),
            0,
            "status of unchanged Service old{i} was written again"
        );
    }
    let mut all: BTreeSet<String> = BTreeSet::new();
    for v in before.iter().chain(&new) {
        assert!(all.insert(v[0].clone()), "IP {} given twice", v[0]);
    }
    for i in 0..40 {
        let name = format!("new{i:02}");
        let writes = api.count_requests(|r| {
            r.path == status_path(&name) && r.method == "PATCH" && r.status == 200
        });
        assert_eq!(
            writes, 1,
            "{name}'s status should be written exactly once, was {writes}"
        );
    }
}

/// 2. A RequireDualStack Service with a pool of both families: one ingress
///    entry per family, primary family first, each `ipMode: VIP`.
#[tokio::test(flavor = "multi_thread")]
async fn dual_stack_service_gets_one_ip_per_family() {
    let (api, dir, kc) = setup().await;
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));
    let mut svc = lb("dual", json!({}));
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    svc["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    api.create(svc).unwrap();
    let mut v6first = lb("dual6", json!({}));
    v6first["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
    v6first["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    api.create(v6first).unwrap();

    for (name, first_v6) in [("dual", false), ("dual6", true)] {
        let ing = until("dual-stack status", || {
            let i = ingress(&api, name);
            (!i.is_empty()).then_some(i)
        })
        .await;
        assert_eq!(ing.len(), 2, "{name}: one entry per family: {ing:?}");
        let parsed: Vec<IpAddr> = ing
            .iter()
            .map(|i| i["ip"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            parsed.iter().filter(|ip| ip.is_ipv4()).count(),
            1,
            "{ing:?}"
        );
        assert_eq!(
            parsed.iter().filter(|ip| ip.is_ipv6()).count(),
            1,
            "{ing:?}"
        );
        assert_eq!(
            parsed[0].is_ipv6(),
            first_v6,
            "{name}: primary family first: {ing:?}"
        );
        for (i, ip) in ing.iter().zip(&parsed) {
            assert_eq!(i["ipMode"], "VIP", "{i}");
            assert_eq!(i.as_object().unwrap().len(), 2, "only ip and ipMode: {i}");
            match ip {
                IpAddr::V4(v4) => assert_eq!(v4.octets()[..3], [10, 77, 0]),
                IpAddr::V6(v6) => assert_eq!(v6.segments()[..4], [0xfd66, 0, 0, 0x77]),
            }
        }
    }
    let a = ips(&api, "dual");
    let b = ips(&api, "dual6");
    assert!(a.iter().all(|ip| !b.contains(ip)), "{a:?} {b:?}");
    until("IPAllocated naming both IPs", || {
        events(&api, "IPAllocated", "dual").into_iter().find(|e| {
            a.iter()
                .all(|ip| e["note"].as_str().unwrap_or("").contains(ip.as_str()))
        })
    })
    .await;
}

/// 3. Sharing: the same key (pier's or MetalLB's annotation) and disjoint
///    ports share one IP; overlapping ports never share: without a
///    requested IP the second gets its own, and asking for the taken IP
///    leaves it pending with an AllocationFailed Event naming the ports.
#[tokio::test(flavor = "multi_thread")]
async fn sharing_key_with_disjoint_ports_shares_and_overlap_is_refused() {
    let (api, dir, kc) = setup().await;
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));
    // Something first, so that sharing is not just "the lowest free IP".
    api.create(lb("first", json!({}))).unwrap();
    until("first allocated", || {
        (!ips(&api, "first").is_empty()).then_some(())
    })
    .await;

    api.create(lb_ports(
        "web",
        json!({"pier.io/sharing-key": "front"}),
        &[80],
    ))
    .unwrap();
    let web = until("web allocated", || {
        let v = ips(&api, "web");
        (!v.is_empty()).then_some(v)
    })
    .await;
    api.create(lb_ports(
        "tls",
        json!({"pier.io/sharing-key": "front"}),
        &[443],
    ))
    .unwrap();
    let tls = until("tls allocated", || {
        let v = ips(&api, "tls");
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(web, tls, "same key and disjoint ports share one IP");
    assert_ne!(web, ips(&api, "first"));

    // MetalLB's key works the same way.
    api.create(lb_ports(
        "dns-tcp",
        json!({"metallb.universe.tf/allow-shared-ip": "dns"}),
        &[53],
    ))
    .unwrap();
    let mut udp = lb_ports(
        "dns-udp",
        json!({"metallb.universe.tf/allow-shared-ip": "dns"}),
        &[53],
    );
    udp["spec"]["ports"][0]["protocol"] = json!("UDP");
    api.create(udp).unwrap();
    let (dt, du) = until("dns pair allocated", || {
        let (a, b) = (ips(&api, "dns-tcp"), ips(&api, "dns-udp"));
        (!a.is_empty() && !b.is_empty()).then_some((a, b))
    })
    .await;
    assert_eq!(dt, du, "53/TCP and 53/UDP under one key share");
    assert_ne!(dt, web);

    // Same key, overlapping port, no requested IP: its own IP.
    api.create(lb_ports(
        "web2",
        json!({"pier.io/sharing-key": "front"}),
        &[80, 8080],
    ))
    .unwrap();
    let web2 = until("web2 allocated", || {
        let v = ips(&api, "web2");
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_ne!(web2, web, "80/TCP is used on {web:?} already");

    // Same key, overlapping port, and asking for the shared IP: pending.
    api.create(lb_ports(
        "clash",
        json!({"pier.io/sharing-key": "front", "pier.io/ip": web[0]}),
        &[443],
    ))
    .unwrap();
    let ev = until("AllocationFailed for clash", || {
        events(&api, "AllocationFailed", "clash").pop()
    })
    .await;
    assert_eq!(ev["type"], "Warning");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains(&web[0]), "{note}");
    assert!(
        note.to_lowercase().contains("443/tcp"),
        "the Event should name the port: {note}"
    );
    assert!(
        note.contains("front"),
        "the Event should name the key: {note}"
    );
    // Still pending once pier has handled a later Service, and nothing
    // written for it.
    api.create(lb("later", json!({}))).unwrap();
    until("later allocated", || {
        (!ips(&api, "later").is_empty()).then_some(())
    })
    .await;
    assert!(ips(&api, "clash").is_empty());
    assert_eq!(status_writes_to(&api, "clash"), 0);
    // The sharers kept their IP.
    assert_eq!(ips(&api, "web"), web);
    assert_eq!(ips(&api, "tls"), web);
}

/// 4. An invalid annotation gives exactly one InvalidAnnotation Event
///    object, however often the watches restart and however long it stays.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_annotation_is_one_event_across_watch_restarts() {
    let (api, dir, kc) = setup().await;
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));
    api.create(lb("typo", json!({"pier.io/ip": "10.77.0.300"})))
        .unwrap();
    let ev = until("InvalidAnnotation event", || {
        events(&api, "InvalidAnnotation", "typo").pop()
    })
    .await;
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["note"]
            .as_str()
            .unwrap_or_default()
            .contains("10.77.0.300"),
        "{ev}"
    );
    for round in 0..4 {
        let seen = service_requests(&api, "watch") + service_requests(&api, "list");
        match round % 3 {
            0 => api.drop_watches(),
            1 => api.restart(),
            _ => {
                api.compact();
                api.drop_watches();
            }
        }
        // pier is back on the Services (a new watch or list), then a
        // change pier does not care about re-sends the Service too.
        until("watching Services again", || {
            (service_requests(&api, "watch") + service_requests(&api, "list") > seen).then_some(())
        })
        .await;
        api.merge_patch(
            "v1",
            "Service",
            Some("shop"),
            "typo",
            json!({"metadata": {"labels": {"round": round.to_string()}}}),
        )
        .unwrap();
    }
    // Pier is alive and relisted: a new Service, created after the last
    // change, still gets an IP and its Event (after everything before it).
    api.create(lb("ok", json!({}))).unwrap();
    until("ok allocated", || {
        (!ips(&api, "ok").is_empty()).then_some(())
    })
    .await;
    until("ok's IPAllocated event", || {
        events(&api, "IPAllocated", "ok").pop()
    })
    .await;
    // The first list and the one after the compaction's 410 are certain;
    // whether a restart makes kube-runtime's watcher relist or resume the
    // watch from its last resourceVersion depends on timing.
    let relists = api.count_requests(|r| r.verb == "list" && r.path == "/api/v1/services");
    assert!(
        relists >= 2,
        "the watches should have listed again after the 410 ({relists})"
    );

    let evs = events(&api, "InvalidAnnotation", "typo");
    assert_eq!(
        evs.len(),
        1,
        "one Event object, not one per resync: {evs:#?}"
    );
    let posts = api.count_requests(|r| r.method == "POST" && r.path.contains("/events"));
    // typo's InvalidAnnotation and ok's IPAllocated.
    assert_eq!(posts, 2, "Events created: {posts}");
    assert!(ips(&api, "typo").is_empty());
    assert_eq!(status_writes_to(&api, "typo"), 0);
}

fn with_status(api: &TestApiServer, name: &str, ip: &str) {
    let mut s = api.get("v1", "Service", Some("shop"), name).unwrap();
    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": ip, "ipMode": "VIP"}]);
    api.update_status(s).unwrap();
}

/// 5. Two Services already carry the same pool IP in their status when pier
///    starts: the first (by name) keeps it, the other gets an Event saying
///    the IP was not adopted and why, and pier never writes that IP over
///    the holder's status. The IPs in status that do not clash are adopted
///    as they are, with no write at all.
#[tokio::test(flavor = "multi_thread")]
async fn adoption_conflict_is_reported_and_the_holder_left_alone() {
    let (api, dir, kc) = setup().await;
    for n in ["alpha", "beta", "calm"] {
        api.create(lb(n, json!({}))).unwrap();
    }
    with_status(&api, "alpha", "10.77.0.9");
    with_status(&api, "beta", "10.77.0.9");
    with_status(&api, "calm", "10.77.0.20");
    api.clear_requests();
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));

    let ev = until("the conflict Event", || {
        events(&api, "AllocationFailed", "beta").pop()
    })
    .await;
    assert_eq!(ev["type"], "Warning");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(note.contains("10.77.0.9"), "{note}");
    assert!(note.contains("not adopted"), "{note}");
    assert!(
        note.contains("shop/alpha"),
        "the Event should name the holder: {note}"
    );

    // beta is pier's: it gets an IP of its own (the clash is not kept
    // in its status, nor copied anywhere else).
    let beta = until("beta renumbered", || {
        let v = ips(&api, "beta");
        (v != ["10.77.0.9"]).then_some(v)
    })
    .await;
    assert_eq!(beta.len(), 1);
    assert_ne!(beta[0], "10.77.0.9");
    // Adopted IPs are held: a new Service gets neither. Once it has its
    // IP and Event, pier has handled everything before it.
    api.create(lb("fresh", json!({}))).unwrap();
    let fresh = until("fresh allocated", || {
        let v = ips(&api, "fresh");
        (!v.is_empty()).then_some(v)
    })
    .await;
    until("fresh's IPAllocated event", || {
        events(&api, "IPAllocated", "fresh").pop()
    })
    .await;
    assert_eq!(ips(&api, "alpha"), ["10.77.0.9"]);
    assert_eq!(ips(&api, "calm"), ["10.77.0.20"]);
    assert_eq!(
        status_writes_to(&api, "alpha"),
        0,
        "alpha's status was written"
    );
    assert_eq!(
        status_writes_to(&api, "calm"),
        0,
        "calm's status was written"
    );
    for taken in ["10.77.0.9", "10.77.0.20", beta[0].as_str()] {
        assert_ne!(fresh[0], taken);
    }
}

/// 6a. Another holder writes itself into the Lease: as soon as the gateway
///     has read that, it writes no status. When the intruder stops
///     renewing, the gateway takes the lease back and writes it.
#[tokio::test(flavor = "multi_thread")]
async fn lease_taken_away_stops_status_writes_at_once() {
    let (api, dir, kc) = setup().await;
    let cfg = config(dir.path(), "a", &kc, (8, 1), POOL);
    let pier = Pier::start(&cfg);
    until("pier leads", || {
        holder(&api).filter(|h| h.ends_with(&pier.holder_suffix()))
    })
    .await;
    api.create(lb("before", json!({}))).unwrap();
    until("before allocated", || {
        (!ips(&api, "before").is_empty()).then_some(())
    })
    .await;

    let mut lease = api
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("pier-system"),
            "pier",
        )
        .unwrap();
    lease["spec"]["holderIdentity"] = json!("intruder");
    api.clear_requests();
    api.update(lease).unwrap();
    // Wait until pier has read the lease with the new holder.
    until("pier reads the lease", || {
        (kube::lease_requests(&api, "GET", 200) >= 1).then_some(())
    })
    .await;
    api.create(lb("after", json!({}))).unwrap();
    // pier has seen the Service, and has read the intruder's lease twice
    // more (at lease_renew_s) and left it alone.
    until("pier knows after", || {
        pier_service(&socket(&cfg), "shop", "after")
    })
    .await;
    until("pier reads the lease again", || {
        (kube::lease_requests(&api, "GET", 200) >= 3).then_some(())
    })
    .await;
    assert_eq!(holder(&api).as_deref(), Some("intruder"));
    assert!(
        ips(&api, "after").is_empty(),
        "a gateway that lost the lease wrote status: {:?}",
        ips(&api, "after")
    );
    assert_eq!(status_writes_to(&api, "after"), 0);
    let lease_writes = api.count_requests(|r| r.method == "PUT" && r.path.contains("/leases/"));
    assert_eq!(lease_writes, 0, "pier wrote over a live lease");

    // The intruder never renews: after the lease duration pier takes over
    // and catches up.
    until("pier leads again", || {
        holder(&api).filter(|h| h.ends_with(&pier.holder_suffix()))
    })
    .await;
    until("after allocated by the new term", || {
        (!ips(&api, "after").is_empty()).then_some(())
    })
    .await;
}

/// 6b. The API server refuses lease updates: the gateway cannot renew, so
///     it stops writing before any other box could take the lease over,
///     and starts again once it can renew.
#[tokio::test(flavor = "multi_thread")]
async fn lease_renewal_denied_stops_status_writes() {
    let (api, dir, kc) = setup().await;
    let cfg = config(dir.path(), "a", &kc, (3, 1), POOL);
    let pier = Pier::start(&cfg);
    until("pier leads", || {
        holder(&api).filter(|h| h.ends_with(&pier.holder_suffix()))
    })
    .await;
    api.create(lb("before", json!({}))).unwrap();
    until("before allocated", || {
        (!ips(&api, "before").is_empty()).then_some(())
    })
    .await;
    api.deny("update", "leases.coordination.k8s.io");
    api.clear_requests();
    until("a refused renewal", || {
        (api.count_requests(|r| {
            r.method == "PUT" && r.path.contains("/leases/") && r.status == 403
        }) >= 1)
            .then_some(())
    })
    .await;
    // From here on another box may take over once the lease has run out
    // (by its renewTime and duration): this one must have stopped writing
    // by then.
    until("the lease expired", || {
        kube::lease_expired(&api).then_some(())
    })
    .await;
    api.create(lb("after", json!({}))).unwrap();
    // pier has seen the Service, and tried to renew once more.
    until("pier knows after", || {
        pier_service(&socket(&cfg), "shop", "after")
    })
    .await;
    let refused = kube::lease_requests(&api, "PUT", 403);
    until("another refused renewal", || {
        (kube::lease_requests(&api, "PUT", 403) > refused).then_some(())
    })
    .await;
    assert!(
        ips(&api, "after").is_empty(),
        "a gateway that cannot renew its lease wrote status"
    );
    assert_eq!(status_writes_to(&api, "after"), 0);

    api.allow_all();
    until("after allocated once renewing works", || {
        (!ips(&api, "after").is_empty()).then_some(())
    })
    .await;
    assert_ne!(ips(&api, "after"), ips(&api, "before"));
}

/// 7. 10,000 Services and 50 Nodes (with EndpointSlices) present when pier
///    starts: every Service gets a distinct IP in its status.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_services_get_distinct_ips() {
    const N: usize = 10_000;
    let (api, dir, kc) = setup().await;
    for n in 0..50 {
        api.create(node(n)).unwrap();
    }
    for i in 0..N {
        api.create(lb(&format!("s{i:05}"), json!({}))).unwrap();
        api.create(slice(i, 50)).unwrap();
    }
    let t = Instant::now();
    let pier = Pier::start(&config(dir.path(), "a", &kc, (15, 5), &["10.80.0.0/16"]));
    // Cheap progress check first (the request log), then the real one:
    // every Service's status, read back.
    let patched = |api: &TestApiServer| {
        api.count_requests(|r| {
            r.method == "PATCH" && r.status == 200 && r.path.ends_with("/status")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let all = loop {
        if patched(&api) >= N {
            if let Some(all) = statuses_if_complete(&api) {
                break all;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {N} statuses written",
            patched(&api)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("10,000 Services written in {:?} (debug build)", t.elapsed());
    // Where the time went, from the daemon's own log.
    let log = std::fs::read_to_string(&pier.log).unwrap_or_default();
    for pat in ["pier started", "initial list", "status written"] {
        let first = log.lines().find(|l| l.contains(pat));
        let last = log.lines().rev().find(|l| l.contains(pat));
        eprintln!("{pat}: first {:?}", first.map(|l| &l[..l.len().min(40)]));
        eprintln!("{pat}: last  {:?}", last.map(|l| &l[..l.len().min(40)]));
    }
    assert_eq!(all.len(), N);
    let distinct: BTreeSet<&String> = all.values().map(|v| &v[0]).collect();
    assert_eq!(distinct.len(), N, "some IP was given twice");
    assert!(distinct.iter().all(|ip| ip.starts_with("10.80.")));
}

/// Every Service's status IPs by name, if each has exactly one.
fn statuses_if_complete(api: &TestApiServer) -> Option<BTreeMap<String, Vec<String>>> {
    let list = api.list("v1", "Service", Some("shop"));
    let got: BTreeMap<String, Vec<String>> = list
        .iter()
        .map(|s| {
            let ips = s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (
                s["metadata"]["name"].as_str().unwrap_or("").to_string(),
                ips,
            )
        })
        .collect();
    got.values().all(|v| v.len() == 1).then_some(got)
}

fn node(n: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node{n:03}"), "labels": {"kubernetes.io/hostname": format!("node{n:03}")}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": format!("127.66.{}.{}", n / 200, 10 + n % 200)}]
        }
    })
}

fn slice(i: usize, nodes: usize) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("s{i:05}-abcde"), "namespace": "shop",
            "labels": {"kubernetes.io/service-name": format!("s{i:05}")}
        },
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": 8080, "protocol": "TCP"}],
        "endpoints": (0..2).map(|k| json!({
            "addresses": [format!("10.244.{}.{}", (i * 2 + k) / 250 % 250, (i * 2 + k) % 250 + 1)],
            "conditions": {"ready": true},
            "nodeName": format!("node{:03}", (i + k) % nodes)
        })).collect::<Vec<_>>()
    })
}

/// 8. A Service whose type changes from LoadBalancer to ClusterIP stops
///    being pier's: its IP is released (the next Service gets it) and only
///    the ingress entry pier wrote is removed from its status.
#[tokio::test(flavor = "multi_thread")]
async fn type_change_releases_the_ip_and_clears_only_piers_entry() {
    let (api, dir, kc) = setup().await;
    let _pier = Pier::start(&config(dir.path(), "a", &kc, (4, 1), POOL));
    api.create(lb("web", json!({}))).unwrap();
    let ip = until("web allocated", || {
        let v = ips(&api, "web");
        (!v.is_empty()).then_some(v)
    })
    .await;
    let mut web = api.get("v1", "Service", Some("shop"), "web").unwrap();
    web["status"]["loadBalancer"]["ingress"]
        .as_array_mut()
        .unwrap()
        .push(json!({"hostname": "other.example"}));
    api.update_status(web).unwrap();
    api.merge_patch(
        "v1",
        "Service",
        Some("shop"),
        "web",
        json!({"spec": {"type": "ClusterIP"}}),
    )
    .unwrap();
    until("pier's entry cleared, the other kept", || {
        let i = ingress(&api, "web");
        (i.len() == 1 && i[0]["hostname"] == "other.example").then_some(())
    })
    .await;
    until("IPReleased event", || {
        events(&api, "IPReleased", "web").pop()
    })
    .await;
    api.create(lb("next", json!({}))).unwrap();
    until("next gets the released IP", || {
        (ips(&api, "next") == ip).then_some(())
    })
    .await;
}
