//! The real `pier` binary's Kubernetes client against the test API server:
//! the kubeconfig forms operators use (client certificate, token file that
//! is rotated, a second context, `tls-server-name`, an API server addressed
//! by IP), and what pier does when the server misbehaves (backoff).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pier_testapi::{ServerOptions, TestApiServer};
use serde_json::json;

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/kube.rs"]
mod kube;
#[path = "common/wait.rs"]
mod wait;
use daemon::Pier;
use kube::{ips, PierConfig};
use wait::{until, until_within};

fn config(dir: &Path, name: &str, kubeconfig: &Path, context: Option<&str>) -> PathBuf {
    let kubernetes = format!(
        "{}load_balancer_class = \"pier.io/gateway\"\n",
        context
            .map(|c| format!("context = \"{c}\"\n"))
            .unwrap_or_default()
    );
    PierConfig {
        name,
        kubernetes: &kubernetes,
        ..Default::default()
    }
    .write(dir, kubeconfig)
}

async fn server(opts: ServerOptions) -> TestApiServer {
    kube::api_server(opts, &["pier-system", kube::SHOP]).await
}

fn lb(name: &str) -> serde_json::Value {
    kube::lb(name, json!({}))
}

/// pier serves a Service through this kubeconfig.
async fn works(api: &TestApiServer, dir: &Path, name: &str, kc: &Path, context: Option<&str>) {
    let _pier = Pier::start(&config(dir, name, kc, context));
    let svc = format!("svc-{name}");
    api.create(lb(&svc)).unwrap();
    until(&format!("{svc} allocated through {name}"), || {
        (!ips(api, &svc).is_empty()).then_some(())
    })
    .await;
}

/// pier exits non-zero at start; its stderr.
fn fails(dir: &Path, name: &str, kc: &Path, context: Option<&str>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pier"))
        .args(["run", "--config"])
        .arg(config(dir, name, kc, context))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "pier should have stopped");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of `key: value` in the server's own kubeconfig.
fn kc_field(api: &TestApiServer, key: &str) -> String {
    api.kubeconfig_yaml()
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")).map(String::from))
        .unwrap_or_else(|| panic!("no {key} in the kubeconfig"))
}

fn write_kubeconfig(
    path: &Path,
    clusters: &[(&str, String)],
    users: &[(&str, String)],
    contexts: &[(&str, &str, &str)],
    current: &str,
) {
    let mut t = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, body) in clusters {
        t.push_str(&format!("- name: {name}\n  cluster:\n{body}"));
    }
    t.push_str("users:\n");
    for (name, body) in users {
        t.push_str(&format!("- name: {name}\n  user:\n{body}"));
    }
    t.push_str("contexts:\n");
    for (name, cluster, user) in contexts {
        t.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {cluster}\n    user: {user}\n"
        ));
    }
    t.push_str(&format!("current-context: {current}\n"));
    std::fs::write(path, t).unwrap();
}

/// A client certificate (no token) is accepted; the same kubeconfig
/// without it is refused with a message saying the credentials were rejected.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_authenticates() {
    let api = server(ServerOptions {
        tls: true,
        client_cert_auth: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = format!(
        "    server: {}\n    certificate-authority-data: {}\n",
        api.url(),
        kc_field(&api, "certificate-authority-data")
    );
    let with_cert = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        kc_field(&api, "client-certificate-data"),
        kc_field(&api, "client-key-data")
    );
    let kc = dir.path().join("cert.kubeconfig");
    write_kubeconfig(
        &kc,
        &[("c", cluster.clone())],
        &[("u", with_cert)],
        &[("x", "c", "u")],
        "x",
    );
    works(&api, dir.path(), "cert", &kc, None).await;
    let none = dir.path().join("none.kubeconfig");
    write_kubeconfig(
        &none,
        &[("c", cluster)],
        &[("u", "    {}\n".into())],
        &[("x", "c", "u")],
        "x",
    );
    let err = fails(dir.path(), "none", &none, None);
    assert!(err.contains("cannot list services"), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
}

/// `context` in pier's config picks a context other than the current one.
#[tokio::test(flavor = "multi_thread")]
async fn configured_context_is_used() {
    let api = server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("two.kubeconfig");
    write_kubeconfig(
        &kc,
        &[
            ("good", format!("    server: {}\n", api.url())),
            ("dead", "    server: http://127.0.0.1:9\n".into()),
        ],
        &[("u", "    {}\n".into())],
        &[("prod", "good", "u"), ("broken", "dead", "u")],
        "broken",
    );
    let err = fails(dir.path(), "current", &kc, None);
    assert!(err.contains("cannot list services"), "{err}");
    works(&api, dir.path(), "chosen", &kc, Some("prod")).await;
    let err = fails(dir.path(), "missing", &kc, Some("staging"));
    assert!(
        err.contains("staging"),
        "the message should name the context: {err}"
    );
}

/// A server certificate naming only a DNS name: addressed by IP it is
/// refused, unless `tls-server-name` names what the certificate holds.
/// A certificate with only the IP as SAN is accepted by IP.
#[tokio::test(flavor = "multi_thread")]
async fn tls_server_name_and_ip_san() {
    let dir = tempfile::tempdir().unwrap();
    let named = server(ServerOptions {
        tls: true,
        server_names: Some(vec!["api.pier.test".into()]),
        ..Default::default()
    })
    .await;
    let ca = kc_field(&named, "certificate-authority-data");
    let plain = format!(
        "    server: {}\n    certificate-authority-data: {ca}\n",
        named.url()
    );
    let kc = dir.path().join("by-ip.kubeconfig");
    write_kubeconfig(
        &kc,
        &[("c", plain.clone())],
        &[("u", "    {}\n".into())],
        &[("x", "c", "u")],
        "x",
    );
    let err = fails(dir.path(), "by-ip", &kc, None);
    assert!(err.contains("cannot list services"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let kc = dir.path().join("sni.kubeconfig");
    write_kubeconfig(
        &kc,
        &[("c", format!("{plain}    tls-server-name: api.pier.test\n"))],
        &[("u", "    {}\n".into())],
        &[("x", "c", "u")],
        "x",
    );
    works(&named, dir.path(), "sni", &kc, None).await;

    let by_ip = server(ServerOptions {
        tls: true,
        server_names: Some(vec!["127.0.0.1".into()]),
        ..Default::default()
    })
    .await;
    let kc = dir.path().join("ip-san.kubeconfig");
    by_ip.kubeconfig(&kc).unwrap();
    works(&by_ip, dir.path(), "ipsan", &kc, None).await;
}

/// A `tokenFile` is read again after it is rotated: once the server takes
/// only the new token, pier keeps working (kube re-reads the file about
/// once a minute, so this test waits that long).
#[tokio::test(flavor = "multi_thread")]
async fn rotated_token_file_is_read_again() {
    let api = server(ServerOptions {
        tls: true,
        bearer_token: Some("first".into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first").unwrap();
    let kc = dir.path().join("tf.kubeconfig");
    write_kubeconfig(
        &kc,
        &[(
            "c",
            format!(
                "    server: {}\n    certificate-authority-data: {}\n",
                api.url(),
                kc_field(&api, "certificate-authority-data")
            ),
        )],
        &[("u", format!("    tokenFile: {}\n", token.display()))],
        &[("x", "c", "u")],
        "x",
    );
    let _pier = Pier::start(&config(dir.path(), "tf", &kc, None));
    api.create(lb("before")).unwrap();
    until("before allocated", || {
        (!ips(&api, "before").is_empty()).then_some(())
    })
    .await;
    std::fs::write(&token, "second").unwrap();
    api.set_bearer_token(Some("second".into()));
    api.create(lb("after")).unwrap();
    until_within(
        "after allocated with the rotated token",
        Duration::from_secs(120),
        || (!ips(&api, "after").is_empty()).then_some(()),
    )
    .await;
    assert!(
        api.count_requests(|r| r.status == 401) >= 1,
        "the old token should have been refused in between"
    );
}

/// While the API server fails every list, pier's watches back off instead
/// of retrying in a loop; when it recovers, pier catches up.
#[tokio::test(flavor = "multi_thread")]
async fn failing_watches_back_off_and_recover() {
    let api = server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    api.kubeconfig(&kc).unwrap();
    let _pier = Pier::start(&config(dir.path(), "a", &kc, None));
    api.create(lb("first")).unwrap();
    until("first allocated", || {
        (!ips(&api, "first").is_empty()).then_some(())
    })
    .await;
    api.clear_requests();
    // Every Service list fails for the next while; the watch ends.
    api.fail_next("list", "services", 500, 1_000_000);
    api.fail_next("watch", "services", 500, 1_000_000);
    api.drop_watches();
    // pier's lease renewals (one a second, lease_renew_s = 1) are the
    // clock: while it renews four times, a watch that backs off tries a
    // few times, one that retries in a loop hundreds of times.
    until("four lease renewals", || {
        (kube::lease_requests(&api, "PUT", 200) >= 4).then_some(())
    })
    .await;
    let tries = api.count_requests(|r| r.path == "/api/v1/services" && r.status == 500);
    assert!(tries >= 1, "pier should have tried again");
    assert!(
        tries <= 20,
        "{tries} attempts during four lease renewals (4 s): the watch retries without backing off"
    );
    api.allow_all();
    api.create(lb("second")).unwrap();
    until_within(
        "second allocated after the failures end",
        Duration::from_secs(60),
        || (!ips(&api, "second").is_empty()).then_some(()),
    )
    .await;
}

/// An API server that will not answer SelfSubjectAccessReviews (refused
/// here) does not stop pier: it warns and runs, and allocates.
#[tokio::test(flavor = "multi_thread")]
async fn access_reviews_refused_is_a_warning_not_a_stop() {
    let api = server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    api.kubeconfig(&kc).unwrap();
    api.deny("create", "selfsubjectaccessreviews.authorization.k8s.io");
    let pier = Pier::start(&config(dir.path(), "a", &kc, None));
    api.create(lb("web")).unwrap();
    until("web allocated", || {
        (!ips(&api, "web").is_empty()).then_some(())
    })
    .await;
    let log = pier.log_text();
    assert!(
        log.contains("SelfSubjectAccessReview") && log.contains("first write"),
        "{log}"
    );
}

/// Each resource pier needs at start, refused by RBAC: pier stops with one
/// message naming that resource and verb.
#[tokio::test(flavor = "multi_thread")]
async fn each_missing_verb_is_named() {
    let api = server(ServerOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    api.kubeconfig(&kc).unwrap();
    for (verb, resource, says) in [
        (
            "list",
            "endpointslices.discovery.k8s.io",
            "cannot list endpointslices.discovery.k8s.io",
        ),
        ("list", "nodes", "cannot list nodes"),
        ("list", "namespaces", "cannot list namespaces"),
        (
            "get",
            "leases.coordination.k8s.io",
            "cannot get leases.coordination.k8s.io pier-system/pier",
        ),
        // The writes, asked with SelfSubjectAccessReviews at start.
        ("patch", "services/status", "cannot patch services/status"),
        (
            "create",
            "events.events.k8s.io",
            "cannot create events.events.k8s.io",
        ),
        (
            "patch",
            "events.events.k8s.io",
            "cannot patch events.events.k8s.io",
        ),
        (
            "update",
            "leases.coordination.k8s.io",
            "cannot update leases.coordination.k8s.io pier-system/pier",
        ),
        (
            "create",
            "leases.coordination.k8s.io",
            "cannot create leases.coordination.k8s.io in pier-system",
        ),
    ] {
        api.allow_all();
        api.deny(verb, resource);
        let err = fails(dir.path(), verb, &kc, None);
        assert!(err.contains(says), "{verb} {resource}: {err}");
        assert!(err.contains("forbidden by RBAC"), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("pier: ")).count(),
            1,
            "one final message: {err}"
        );
    }
}
