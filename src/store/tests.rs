use super::*;
use crate::model::{PortSpec, Protocol};

fn alloc(ns: &str, name: &str, ip: &str) -> Allocation {
    Allocation {
        service: ServiceKey::new(ns, name),
        ip: ip.parse().unwrap(),
        pool: "public".into(),
        sharing_key: None,
        ports: vec![PortSpec {
            port: 80,
            protocol: Protocol::Tcp,
        }],
    }
}

#[test]
fn sled_round_trip_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        assert!(s.load().unwrap().is_empty());
        s.apply(&StoreBatch {
            put: vec![
                alloc("default", "web", "10.0.0.1"),
                alloc("default", "web", "fd00::1"),
                alloc("kube-system", "dns", "10.0.0.2"),
            ],
            remove: vec![],
        })
        .unwrap();
        s.apply(&StoreBatch {
            put: vec![],
            remove: vec![(
                ServiceKey::new("kube-system", "dns"),
                "10.0.0.2".parse().unwrap(),
            )],
        })
        .unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let got = s.load().unwrap();
    assert_eq!(
        got,
        vec![
            alloc("default", "web", "10.0.0.1"),
            alloc("default", "web", "fd00::1")
        ]
    );
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    match SledStore::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a locked store"),
    }
}

#[test]
fn corrupt_record_refuses_to_load_and_is_not_wiped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        s.apply(&StoreBatch {
            put: vec![alloc("default", "web", "10.0.0.1")],
            remove: vec![],
        })
        .unwrap();
        s.tree()
            .insert(b"default\0bad\x0010.0.0.9", b"{not json".to_vec())
            .unwrap();
        s.raw_db().flush().unwrap();
    }
    for _ in 0..2 {
        let s = SledStore::open(dir.path()).unwrap();
        let err = s.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("default\\0bad"), "{err}");
        // the good record is still there
        assert!(s
            .tree()
            .get(record_key(
                &ServiceKey::new("default", "web"),
                &"10.0.0.1".parse().unwrap()
            ))
            .unwrap()
            .is_some());
    }
}

#[test]
fn future_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.raw_db()
            .insert(META_FORMAT_FOR_TESTS, b"99".to_vec())
            .unwrap();
        s.raw_db().flush().unwrap();
    }
    match SledStore::open(dir.path()) {
        Err(StoreError::FutureFormat { found: 99, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a future store"),
    }
}

#[test]
fn future_record_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let a = alloc("default", "web", "10.0.0.1");
    let mut rec = serde_json::to_value(Record {
        v: 1,
        allocation: a.clone(),
    })
    .unwrap();
    rec["v"] = 7.into();
    s.tree()
        .insert(
            record_key(&a.service, &a.ip),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    assert!(matches!(
        s.load(),
        Err(StoreError::FutureFormat { found: 7, .. })
    ));
}

#[test]
fn record_under_wrong_key_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let a = alloc("default", "web", "10.0.0.1");
    s.tree()
        .insert(
            record_key(&a.service, &"10.0.0.2".parse().unwrap()),
            Record::encode_v1(&a),
        )
        .unwrap();
    assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn unopenable_dir_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    let err = SledStore::open(&file.join("sub")).err().expect("must fail");
    assert!(err.to_string().contains("plainfile"), "{err}");
}

#[test]
fn memory_store_fails_on_request() {
    let mut m = MemoryStore::new();
    m.set_fail_writes(true);
    assert!(m
        .apply(&StoreBatch {
            put: vec![alloc("a", "b", "10.0.0.1")],
            remove: vec![]
        })
        .is_err());
    assert!(m.load().unwrap().is_empty());
}

#[test]
fn version_1_stores_are_read_and_marked_as_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let old = alloc("default", "web", "10.0.0.1");
    let mut shared = alloc("shop", "api", "fd00::7");
    shared.sharing_key = Some("key with spaces, \"quotes\"".into());
    {
        let s = SledStore::open(dir.path()).unwrap();
        for a in [&old, &shared] {
            s.tree()
                .insert(record_key(&a.service, &a.ip), Record::encode_v1(a))
                .unwrap();
        }
        s.raw_db()
            .insert(META_FORMAT_FOR_TESTS, b"1".to_vec())
            .unwrap();
        s.raw_db().flush().unwrap();
    }
    let mut s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.raw_db().get(META_FORMAT_FOR_TESTS).unwrap().as_deref(),
        Some(b"2".as_slice())
    );
    let mut want = vec![old.clone(), shared.clone()];
    want.sort();
    assert_eq!(s.load().unwrap(), want);
    // Rewritten in the compact form, read back the same.
    s.apply(&StoreBatch {
        put: vec![shared.clone()],
        remove: vec![],
    })
    .unwrap();
    let raw = s
        .tree()
        .get(record_key(&shared.service, &shared.ip))
        .unwrap()
        .unwrap();
    assert_eq!(
        raw.first(),
        Some(&b'['),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(raw.len() < 60, "{} bytes", raw.len());
    assert_eq!(s.load().unwrap(), want);
}

#[test]
fn a_batch_larger_than_a_chunk_applies_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<Allocation> = (0..1_300)
        .map(|i| {
            alloc(
                "shop",
                &format!("s{i:05}"),
                &format!("10.80.{}.{}", i / 256, i % 256),
            )
        })
        .collect();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        s.apply(&StoreBatch {
            put: many.clone(),
            remove: vec![],
        })
        .unwrap();
        // Move every IP to another Service in one batch: the removals go
        // first, so no key is left behind.
        let moved: Vec<Allocation> = many
            .iter()
            .map(|a| Allocation {
                service: ServiceKey::new("other", &a.service.name),
                ..a.clone()
            })
            .collect();
        s.apply(&StoreBatch {
            put: moved,
            remove: many.iter().map(|a| (a.service.clone(), a.ip)).collect(),
        })
        .unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let got = s.load().unwrap();
    assert_eq!(got.len(), many.len());
    assert!(got.iter().all(|a| a.service.namespace == "other"));
}

#[test]
fn compact_record_with_a_bad_key_or_future_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    s.tree()
        .insert(
            b"default\x00web".as_slice(),
            br#"[2,"public",null,["80/tcp"]]"#.to_vec(),
        )
        .unwrap();
    assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
    s.tree().clear().unwrap();
    s.tree()
        .insert(
            b"default\x00web\x0010.0.0.1".as_slice(),
            br#"[9,"public",null,[]]"#.to_vec(),
        )
        .unwrap();
    assert!(matches!(
        s.load(),
        Err(StoreError::FutureFormat { found: 9, .. })
    ));
}

#[test]
fn sleds_busy_lock_error_is_recognised() {
    // What sled 0.34 returns while this process's previous handle still
    // holds the database file (its flusher thread is finishing).
    let busy = std::io::Error::other(
        "could not acquire lock on \"/tmp/x/allocations.db/db\": Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }",
    );
    assert!(super::sled_store::lock_busy(&busy));
    assert!(super::sled_store::lock_busy(&std::io::Error::from(
        std::io::ErrorKind::WouldBlock
    )));
    assert!(!super::sled_store::lock_busy(&std::io::Error::other(
        "disk I/O error"
    )));
}

fn plan(vips: usize) -> LastPlan {
    use crate::model::{AnnounceMode, Announcement, Desired, NextHop};
    let hops: std::sync::Arc<[NextHop]> = (1..=3)
        .map(|i| NextHop {
            node: format!("n{i}"),
            address: format!("10.0.0.{i}").parse().unwrap(),
            labels: Default::default(),
        })
        .collect();
    let desired = Desired {
        generation: 9,
        announcements: (0..vips)
            .map(|i| {
                std::sync::Arc::new(Announcement {
                    vip: std::net::IpAddr::from([10, 77, (i / 256) as u8, (i % 256) as u8]),
                    pool: "public".into(),
                    mode: AnnounceMode::BgpNodes,
                    next_hops: hops.clone(),
                    bgp: Default::default(),
                    services: vec![ServiceKey::new("default", format!("s{i}"))],
                    ports: vec![],
                })
            })
            .collect(),
    };
    LastPlan {
        desired,
        leader: true,
    }
}

#[test]
fn the_saved_plan_survives_a_reopen_with_next_hop_sets_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = plan(100);
    let bytes = StoredDesired::encode(&d);
    // One set of three next hops, not a hundred.
    assert_eq!(String::from_utf8_lossy(&bytes).matches("\"n2\"").count(), 1);
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.load_desired().unwrap(), None);
        s.save_desired(&d).unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(s.load_desired().unwrap(), Some(d));
}

#[test]
fn a_future_or_broken_saved_plan_is_refused() {
    let p = std::path::Path::new("x");
    match StoredDesired::decode(p, br#"{"v":99}"#) {
        Err(StoreError::FutureFormat { found: 99, .. }) => {}
        other => panic!("{other:?}"),
    }
    let good = String::from_utf8(StoredDesired::encode(&plan(1))).unwrap();
    assert!(good.contains("\"hops\":0,"), "{good}");
    let bad = good.replace("\"hops\":0,", "\"hops\":3,");
    assert!(StoredDesired::decode(p, good.as_bytes()).is_ok());
    match StoredDesired::decode(p, bad.as_bytes()) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("next-hop set 3"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_a_failed_write_left_are_put_back_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SledStore::open(dir.path()).unwrap();
    s.apply(&StoreBatch {
        put: vec![alloc("default", "a", "10.0.0.1")],
        remove: vec![],
    })
    .unwrap();
    // A failure after the batch reached sled (as a flush failing on a full
    // disk): b was written, a removed, but the engine undid both.
    s.unsettled.insert(
        record_key(
            &ServiceKey::new("default", "a"),
            &"10.0.0.1".parse().unwrap(),
        ),
        s.tree()
            .get(record_key(
                &ServiceKey::new("default", "a"),
                &"10.0.0.1".parse().unwrap(),
            ))
            .unwrap(),
    );
    s.unsettled.insert(
        record_key(
            &ServiceKey::new("default", "b"),
            &"10.0.0.2".parse().unwrap(),
        ),
        None,
    );
    s.tree()
        .remove(record_key(
            &ServiceKey::new("default", "a"),
            &"10.0.0.1".parse().unwrap(),
        ))
        .unwrap();
    s.tree()
        .insert(
            record_key(
                &ServiceKey::new("default", "b"),
                &"10.0.0.2".parse().unwrap(),
            ),
            Record::encode(&alloc("default", "b", "10.0.0.2")),
        )
        .unwrap();
    s.failed = true;
    // The engine's next batch: c gets what b had taken.
    s.apply(&StoreBatch {
        put: vec![alloc("default", "c", "10.0.0.2")],
        remove: vec![],
    })
    .unwrap();
    assert_eq!(s.unsettled(), 0);
    drop(s);
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.load().unwrap(),
        vec![
            alloc("default", "a", "10.0.0.1"),
            alloc("default", "c", "10.0.0.2")
        ]
    );
}
