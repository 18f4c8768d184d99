//! `WorkflowStore`: published workflows, versioned and immutable.

use studio_core::store::WorkflowEntry;

use crate::support::{Backing, fast_settings, test_store};

async fn versions_are_numbered_kept_and_retired(kind: Backing) {
    let t = test_store(kind, fast_settings());
    let s = t.store.as_ref();
    let g0 = s.workflows_generation().await.unwrap();
    assert!(s.get_workflow("portrait", None).await.unwrap().is_none());
    assert_eq!(
        s.publish_workflow("portrait", "{\"v\":1}").await.unwrap(),
        1
    );
    assert_eq!(
        s.publish_workflow("portrait", "{\"v\":2}").await.unwrap(),
        2
    );
    assert_eq!(s.publish_workflow("banner", "{}").await.unwrap(), 1);
    let g1 = s.workflows_generation().await.unwrap();
    assert!(
        g1 >= g0 + 3,
        "each publish raises the generation: {g0} → {g1}"
    );
    let latest = s.get_workflow("portrait", None).await.unwrap().unwrap();
    assert_eq!(
        (latest.version, latest.definition.as_str()),
        (2, "{\"v\":2}")
    );
    let first = s.get_workflow("portrait", Some(1)).await.unwrap().unwrap();
    assert_eq!(first.definition, "{\"v\":1}", "versions never change");
    assert!(s.get_workflow("portrait", Some(3)).await.unwrap().is_none());
    assert!(s.retire_workflow("portrait").await.unwrap());
    assert!(!s.retire_workflow("nothing").await.unwrap());
    assert!(s.workflows_generation().await.unwrap() > g1);
    let retired = s.get_workflow("portrait", Some(1)).await.unwrap().unwrap();
    assert!(retired.retired, "a retired name's versions are still there");
    assert_eq!(
        s.list_workflows().await.unwrap(),
        [
            WorkflowEntry {
                name: "banner".into(),
                latest: 1,
                retired: false
            },
            WorkflowEntry {
                name: "portrait".into(),
                latest: 2,
                retired: true
            }
        ]
    );
    assert_eq!(
        s.publish_workflow("portrait", "{\"v\":3}").await.unwrap(),
        3
    );
    assert!(
        !s.get_workflow("portrait", None)
            .await
            .unwrap()
            .unwrap()
            .retired,
        "publishing again brings the name back"
    );
}

both_stores!(versions_are_numbered_kept_and_retired);
