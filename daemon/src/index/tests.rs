//! The index's tests: against full rereads and rollups.

use super::saved::{SAVED_FORMAT, open_saved};
use super::*;
use sitesync_model::automerge::ChangeHash;
use sitesync_model::progress::group_key;

fn component(n: u128, drawing: u128, hours: f64, completion: f64, deleted: bool) -> Component {
    Component {
        id: ComponentId::from_u128(n),
        project_id: ProjectId::from_u128(1),
        drawing_id: DrawingId::from_u128(drawing),
        tag: format!("T-{n:03}"),
        kind: "spool".into(),
        template_id: sitesync_model::TemplateId::from_u128(9),
        workflow_type: sitesync_model::WorkflowType::Discrete,
        quantity_total: None,
        unit: None,
        budget_hours: Some(hours),
        attributes: BTreeMap::new(),
        completion_percent: completion,
        status: Status::of(completion),
        deleted,
        created_at: sitesync_model::Timestamp(1),
        updated_at: sitesync_model::Timestamp(n as i64),
        updated_by: "u".into(),
        milestones: Vec::new(),
    }
}

/// Drawing `n`, with no area or system.
fn drawing_info(n: u128) -> DrawingInfo {
    DrawingInfo {
        id: DrawingId::from_u128(n),
        project_id: ProjectId::from_u128(1),
        number: format!("D-{n}"),
        title: None,
        revision: None,
        parent_id: None,
        area: None,
        system: None,
        deleted: false,
        created_at: sitesync_model::Timestamp(1),
        updated_at: sitesync_model::Timestamp(1),
        updated_by: "u".into(),
    }
}

/// A repeatable pseudo-random sequence: each call gives a number below `m`.
fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |m| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    }
}

/// A done weld milestone with every optional field set.
fn milestone(conflicts: Vec<sitesync_model::drawing::ConflictView>) -> sitesync_model::MilestoneView {
    sitesync_model::MilestoneView {
        key: "weld".into(),
        name: "Weld".into(),
        weight: 50.0,
        completed: Some(true),
        percent: None,
        quantity: Some(2.5),
        updated_at: Some(sitesync_model::Timestamp(1_700_000_000_123)),
        updated_by: Some("ann".into()),
        device_id: Some(sitesync_model::DeviceId::from_u128(5)),
        conflicts,
    }
}

fn empty() -> ProjectIndex {
    ProjectIndex {
        drawings: BTreeMap::new(),
        components: Vec::new(),
        keys: Vec::new(),
        positions: HashMap::new(),
        members: HashMap::new(),
        strings: HashSet::new(),
        unsaved: HashSet::new(),
    }
}

/// A view reads back exactly as put, every optional field set or not,
/// with or without a conflict (the JSON path), and the entry's own
/// fields match it.
#[test]
fn a_view_reads_back_whole_from_its_packed_entry() {
    let conflict = sitesync_model::drawing::ConflictView {
        value: serde_json::json!({"completed": false, "note": [1, "x"]}),
        updated_by: "bob".into(),
        updated_at: sitesync_model::Timestamp(1_700_000_000_999),
        device_id: sitesync_model::DeviceId::from_u128(6),
    };
    let mut plain = component(1, 1, 2.0, 50.0, false);
    plain.attributes = BTreeMap::from([("area".into(), "U03".into()), ("line".into(), "L-7".into())]);
    plain.unit = Some("m".into());
    plain.quantity_total = Some(12.0);
    plain.milestones = vec![milestone(Vec::new()), milestone(Vec::new())];
    let mut conflicted = component(2, 1, 3.0, 25.0, true);
    conflicted.milestones = vec![milestone(vec![conflict])];

    let mut index = empty();
    for c in [plain, conflicted] {
        assert_eq!(unpack(&pack(&c)), c);
        index.put(&c);
        assert_eq!(index.get(c.id), Some(c.clone()));
        let slot = index.slot(c.id).unwrap();
        assert_eq!(
            (slot.deleted, &*slot.tag, &*slot.kind),
            (c.deleted, c.tag.as_str(), c.kind.as_str())
        );
        for (k, v) in &c.attributes {
            assert_eq!(slot.attribute(k), Some(v.as_str()));
        }
    }
    assert_eq!(
        index
            .query(
                &ComponentQuery {
                    attributes: vec![("area".into(), "U03".into())],
                    ..Default::default()
                },
                Page::default()
            )
            .total,
        1
    );
}

/// `attr.area` and `attr.system` find a component by its drawing's
/// area or system when it has none of its own (as the rollups group
/// it), and by its own when it has one; other attributes never fall
/// back.
#[test]
fn area_and_system_filters_fall_back_to_the_drawings() {
    let drawing = |n: u128, area: &str| DrawingInfo {
        area: Some(area.into()),
        system: Some("Steam".into()),
        ..drawing_info(n)
    };
    let mut index = empty();
    index
        .drawings
        .insert(DrawingId::from_u128(1), drawing(1, "Bay 1"));
    index
        .drawings
        .insert(DrawingId::from_u128(2), drawing(2, "Bay 2"));
    let inherits = component(1, 1, 1.0, 0.0, false);
    let mut own = component(2, 1, 1.0, 0.0, false);
    own.attributes = BTreeMap::from([("area".into(), "Bay 2".into()), ("line".into(), "L-1".into())]);
    let other = component(3, 2, 1.0, 0.0, false);
    for c in [&inherits, &own, &other] {
        index.put(c);
    }
    let tags = |attributes: Vec<(&str, &str)>| -> Vec<String> {
        let q = ComponentQuery {
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Default::default()
        };
        index
            .query(&q, Page::default())
            .items
            .into_iter()
            .map(|c| c.tag)
            .collect()
    };
    assert_eq!(tags(vec![("area", "Bay 1")]), ["T-001"]);
    assert_eq!(tags(vec![("area", "Bay 2")]), ["T-002", "T-003"]);
    assert_eq!(tags(vec![("system", "Steam")]), ["T-001", "T-002", "T-003"]);
    assert_eq!(tags(vec![("area", "Bay 2"), ("line", "L-1")]), ["T-002"]);
    assert!(tags(vec![("area", "Bay 9")]).is_empty());
    assert!(
        tags(vec![("line", "Bay 1")]).is_empty(),
        "only area and system fall back"
    );
}

/// A view with every field set.
fn full_view() -> Component {
    let mut c = component(1, 1, 2.0, 50.0, false);
    c.attributes = BTreeMap::from([("area".into(), "U03".into())]);
    c.unit = Some("m".into());
    c.quantity_total = Some(12.0);
    c.milestones = vec![milestone(Vec::new())];
    c
}

/// Saved records hold packed views, so a change to how a view packs
/// must bump [`SAVED_FORMAT`]: when this fails, bump it, then update
/// the bytes here.
#[test]
fn the_packed_view_format_is_pinned() {
    let hex: String = pack(&full_view()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (SAVED_FORMAT, hex.as_str()),
        (
            2,
            concat!(
                "00100000000000000000000000000000000110000000000000000000000000000000011000000000",
                "00000000000000000000000105542d3030310573706f6f6c10000000000000000000000000000000",
                "090001000000000000284001016d0100000000000000400104617265610355303300000000000049",
                "40010018313937302d30312d30315430303a30303a30302e3030315a18313937302d30312d303154",
                "30303a30303a30302e3030315a0175010477656c640457656c640000000000004940010100010000",
                "0000000004400118323032332d31312d31345432323a31333a32302e3132335a0103616e6e011000",
                "00000000000000000000000000000500"
            )
        ),
        "the packed view changed: bump SAVED_FORMAT, then pin the new bytes"
    );
}

/// A saved record's views read back whole, as a start puts them.
fn decode_saved(record: &[u8], did: DrawingId, heads: &[ChangeHash]) -> Option<Vec<Component>> {
    let raw = open_saved(record, heads)?;
    let views = saved_views(&raw, did)?;
    Some(
        views
            .into_iter()
            .map(|v| match v {
                SavedView::Packed(head, packed) => {
                    let c = unpack(packed);
                    assert_eq!(head, Head::of(&c), "the head read from the bytes is the view's");
                    c
                }
                SavedView::Whole(c, packed) => {
                    assert_eq!(packed, &*pack(&c));
                    c
                }
            })
            .collect(),
    )
}

/// An entry's fields read straight from a packed view are the view's,
/// every optional field set or not.
#[test]
fn a_packed_views_head_is_its_entry_fields() {
    let mut bare = component(7, 2, 0.0, 0.0, true);
    bare.budget_hours = None;
    for c in [full_view(), bare] {
        let packed = pack(&c);
        assert_eq!(packed[0], 0, "packed with bincode");
        assert_eq!(Head::read_packed(&packed[1..]), Some(Head::of(&c)));
    }
}

/// A record reads back at exactly the heads it was saved with, and is
/// ignored otherwise: other heads, another format, cut
/// short, or views of another drawing.
#[test]
fn a_saved_record_reads_back_only_at_its_heads() {
    let did = DrawingId::from_u128(1);
    let heads = vec![ChangeHash([7; 32]), ChangeHash([3; 32])];
    let mut second = component(2, 1, 1.0, 0.0, true);
    second.kind = "weld".into();
    let mut conflicted = component(3, 1, 1.0, 25.0, false);
    conflicted.milestones = full_view().milestones;
    conflicted.milestones[0].conflicts = vec![sitesync_model::drawing::ConflictView {
        value: serde_json::json!({"completed": false}),
        updated_by: "bob".into(),
        updated_at: sitesync_model::Timestamp(2),
        device_id: sitesync_model::DeviceId::from_u128(6),
    }];
    let views = [full_view(), second, conflicted];
    let unsaved = |drawing: DrawingId, views: &[Component]| Unsaved {
        project: ProjectId::from_u128(1),
        drawing,
        heads: heads.clone(),
        views: views.iter().map(pack).collect(),
    };
    let (name, record) = unsaved(did, &views).record();
    assert_eq!(name, format!("index/{}/{did}", ProjectId::from_u128(1)));
    // Taken unsorted; the record sorts them, and `saved` sorts the
    // document's before comparing.
    let mut sorted = heads.clone();
    sorted.sort();
    let read = decode_saved(&record, did, &sorted).expect("read back at its heads");
    assert_eq!(read, views);

    assert!(decode_saved(&record, did, &sorted[..1]).is_none(), "fewer heads");
    assert!(
        decode_saved(&record, did, &[ChangeHash([7; 32]), ChangeHash([9; 32])]).is_none(),
        "other heads"
    );
    let mut other_format = record.clone();
    other_format[..4].copy_from_slice(&(SAVED_FORMAT + 1).to_le_bytes());
    assert!(
        decode_saved(&other_format, did, &sorted).is_none(),
        "another format"
    );
    assert!(
        decode_saved(&record[..record.len() / 2], did, &sorted).is_none(),
        "cut short"
    );
    assert!(decode_saved(&record[..3], did, &sorted).is_none(), "no format");
    let (_, first_two) = unsaved(did, &views[..2]).record();
    let mut raw = open_saved(&first_two, &sorted).unwrap();
    raw[..4].copy_from_slice(&3u32.to_le_bytes());
    assert!(saved_views(&raw, did).is_none(), "a view short of its count");
    let (_, elsewhere) = unsaved(DrawingId::from_u128(2), &views).record();
    assert!(
        decode_saved(&elsewhere, DrawingId::from_u128(2), &sorted).is_none(),
        "views of drawing 1"
    );
    let (_, empty) = unsaved(did, &[]).record();
    assert_eq!(
        decode_saved(&empty, did, &sorted).map(|v| v.len()),
        Some(0),
        "a drawing with no components"
    );
}

/// The kept totals equal a full rollup after any sequence of puts
/// (creates, updates, deletes, restores, across drawings).
#[test]
fn kept_totals_match_a_full_rollup() {
    let mut index = empty();
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..2_000 {
        let n = u128::from(next(300));
        let c = component(
            n,
            n % 7,
            (next(40) as f64) / 4.0,
            (next(5) * 25) as f64,
            next(6) == 0,
        );
        index.put(&c);
        let all: Vec<Component> = index.components.iter().map(Slot::component).collect();
        let full = rollup(all.iter().map(|c| (c, None)), None);
        let kept = index.rollup(None);
        assert_eq!(kept.component_count, full.component_count);
        assert!((kept.completion_percent - full.completion_percent).abs() < 1e-6);
        assert!((kept.earned_hours - full.earned_hours).abs() < 1e-6);
        assert!((kept.budget_hours - full.budget_hours).abs() < 1e-6);
    }
    for d in 0..7 {
        let did = DrawingId::from_u128(d);
        let live = index.live_on(did);
        let full = rollup(live.iter().map(|c| (c, None)), None);
        assert_eq!(index.drawing_tally(did).count, full.component_count);
    }
}

#[test]
fn put_says_what_changed() {
    let mut index = empty();
    assert_eq!(
        index.put(&component(1, 1, 2.0, 0.0, false)),
        Some(Change::Created)
    );
    assert_eq!(index.put(&component(1, 1, 2.0, 0.0, false)), None);
    assert_eq!(
        index.put(&component(1, 1, 2.0, 50.0, false)),
        Some(Change::Updated)
    );
    assert_eq!(
        index.put(&component(1, 1, 2.0, 50.0, true)),
        Some(Change::Deleted)
    );
    assert_eq!(
        index.put(&component(1, 1, 2.0, 50.0, false)),
        Some(Change::Updated)
    );
    assert_eq!(index.drawing_tally(DrawingId::from_u128(1)).earned, 1.0);
}

/// Every query returns exactly the live (or all) components a plain
/// filter over the whole views picks, after creates and updates that
/// change kinds, attributes, status and deletion: the packed keys, the
/// interned comparisons and the attribute bits never drop a match or
/// let a non-match through.
#[test]
fn a_query_picks_what_a_plain_filter_over_the_views_picks() {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    const KINDS: [&str; 3] = ["spool", "weld", "pipe"];
    const NAMES: [&str; 3] = ["area", "system", "line"];
    const VALUES: [&str; 4] = ["U01", "U02", "SYS-1", "L-7"];
    let mut index = empty();
    // Drawings with an area and a system, for components without one.
    for n in 0..9u128 {
        let mut d = drawing_info(n);
        d.area = (n % 3 > 0).then(|| VALUES[(n % 2) as usize].to_owned());
        d.system = (n % 4 == 0).then(|| "SYS-1".to_owned());
        index.drawings.insert(d.id, d);
    }
    let mut views: BTreeMap<ComponentId, Component> = BTreeMap::new();
    for _ in 0..1_500 {
        let n = u128::from(next(400));
        let mut c = component(n, n % 9, 1.0, (next(5) * 25) as f64, next(5) == 0);
        c.kind = KINDS[next(3) as usize].into();
        for name in NAMES {
            if next(3) > 0 {
                c.attributes.insert(name.into(), VALUES[next(4) as usize].into());
            }
        }
        index.put(&c);
        views.insert(c.id, c);
    }
    for _ in 0..400 {
        let pick = |n: u64, of: &[&str]| of.get(n as usize).map(|s| s.to_string());
        let mut attributes = Vec::new();
        for _ in 0..next(3) {
            // Now and then a name or value no component has.
            let name = pick(next(4), &NAMES).unwrap_or_else(|| "nowhere".into());
            let value = pick(next(5), &VALUES).unwrap_or_else(|| "U99".into());
            attributes.push((name, value));
        }
        let q = ComponentQuery {
            kind: match next(5) {
                0 => Some("nothing".into()),
                1 => None,
                n => pick(n - 2, &KINDS),
            },
            status: [
                None,
                Some(Status::NotStarted),
                Some(Status::InProgress),
                Some(Status::Completed),
            ][next(4) as usize],
            attributes,
            min_completion: (next(3) == 0).then_some(50.0),
            include_deleted: next(2) == 0,
            ..Default::default()
        };
        let expected: Vec<ComponentId> = views
            .values()
            .filter(|c| q.include_deleted || !c.deleted)
            .filter(|c| q.kind.as_ref().is_none_or(|k| &c.kind == k))
            .filter(|c| q.status.is_none_or(|s| c.status == s))
            .filter(|c| q.min_completion.is_none_or(|m| c.completion_percent >= m))
            .filter(|c| {
                let drawing = index.drawings.get(&c.drawing_id);
                q.attributes.iter().all(|(k, v)| match k.as_str() {
                    "area" => group_key(c, drawing, GroupBy::Area).as_ref() == Some(v),
                    "system" => group_key(c, drawing, GroupBy::System).as_ref() == Some(v),
                    _ => c.attributes.get(k) == Some(v),
                })
            })
            .map(|c| c.id)
            .collect();
        let page = index.query(
            &q,
            Page {
                offset: 0,
                limit: 1000,
            },
        );
        let mut got: Vec<ComponentId> = page.items.iter().map(|c| c.id).collect();
        got.sort();
        assert_eq!(got, expected, "{q:?}");
        assert_eq!(page.total, expected.len());
    }
}

#[test]
fn a_query_pages_in_order_without_overlap() {
    let mut index = empty();
    for n in 0..25 {
        index.put(&component(n, n % 3, 1.0, ((n * 7) % 5 * 25) as f64, n == 4));
    }
    let q = ComponentQuery {
        sort: Sort::CompletionDesc,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut page = Page { offset: 0, limit: 10 };
    loop {
        let p = index.query(&q, page);
        assert_eq!(p.total, 24);
        seen.extend(p.items.iter().map(|c| (c.completion_percent, c.tag.clone())));
        match p.next_cursor {
            Some(cursor) => {
                page = Page {
                    offset: Page::decode_cursor(&cursor).unwrap(),
                    limit: 10,
                }
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 24);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(seen, sorted);
}
