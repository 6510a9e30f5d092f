//! Derived values: component completion and status, and rollups. Computed on
//! read, never stored in a document — derived state in a CRDT is a conflict
//! waiting to happen.
//!
//! * Component completion = Σ weight·progress / Σ weight, progress ∈ [0, 1]:
//!   discrete 1 if done, percentage p/100, quantity min(q/total, 1).
//! * Rollups weight components by `budget_hours` (1 where unset), never by a
//!   plain average of percentages: completion = Σ hours·completion / Σ hours,
//!   earned hours = Σ hours·completion/100.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drawing::Component;
use crate::project::DrawingInfo;

/// Where a component stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    NotStarted,
    InProgress,
    Completed,
}

impl Status {
    /// `not_started` at 0, `completed` at 100, else `in_progress`.
    pub fn of(completion_percent: f64) -> Self {
        if completion_percent <= 0.0 {
            Self::NotStarted
        } else if completion_percent >= 100.0 {
            Self::Completed
        } else {
            Self::InProgress
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

/// Rounds away floating-point dust (69.99999999999999 → 70.0) so equal
/// progress compares equal everywhere. Six decimals is far below anything a
/// person reads.
pub fn tidy(percent: f64) -> f64 {
    (percent * 1e6).round() / 1e6
}

/// Weighted completion in percent from (weight, progress ∈ [0, 1]) pairs.
/// Multiplies before dividing so exact inputs give exact outputs
/// (weights 10/30/60 with the first and last done: exactly 70.0).
pub fn weighted_percent(parts: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let (num, den) = parts.into_iter().fold((0.0, 0.0), |(n, d), (w, p)| {
        (n + w * p.clamp(0.0, 1.0) * 100.0, d + w)
    });
    if den > 0.0 { tidy(num / den) } else { 0.0 }
}

/// How to group a rollup.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Drawing,
    Area,
    System,
    Kind,
    Template,
    /// The component's `test_package` attribute (imported from `TEST PKG`):
    /// a pressure test is signed off package by package.
    TestPackage,
}

impl GroupBy {
    /// Parses the `group_by` query value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "drawing" => Self::Drawing,
            "area" => Self::Area,
            "system" => Self::System,
            "kind" => Self::Kind,
            "template" => Self::Template,
            "test_package" => Self::TestPackage,
            _ => return None,
        })
    }
}

/// One group of a rollup. `key` is null for components with no value for the
/// grouping (e.g. no area anywhere).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: Option<String>,
    /// A readable name for the key where it is an id (the drawing number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub component_count: usize,
    pub completion_percent: f64,
    pub budget_hours: f64,
    pub earned_hours: f64,
}

/// A rollup over a set of components.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub component_count: usize,
    pub completion_percent: f64,
    pub budget_hours: f64,
    pub earned_hours: f64,
    pub groups: Vec<Group>,
}

/// The running sums behind a rollup: kept per drawing by the daemon's
/// index, so a project's totals are a sum of a few thousand tallies instead
/// of a walk over every component.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    pub count: usize,
    pub hours: f64,
    pub earned: f64,
}

impl Tally {
    /// Counts one component (the caller skips deleted ones).
    pub fn add(&mut self, c: &Component) {
        self.add_one(c.budget_hours, c.completion_percent);
    }

    /// Adds one component given only the two fields a tally reads.
    pub fn add_one(&mut self, budget_hours: Option<f64>, completion_percent: f64) {
        let hours = budget_hours.unwrap_or(1.0);
        self.count += 1;
        self.hours += hours;
        self.earned += hours * completion_percent / 100.0;
    }

    /// Adds another tally (e.g. a drawing's to its project's).
    pub fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.hours += other.hours;
        self.earned += other.earned;
    }

    /// Completion weighted by hours, in percent.
    pub fn completion(&self) -> f64 {
        if self.hours > 0.0 {
            tidy(self.earned / self.hours * 100.0)
        } else {
            0.0
        }
    }

    /// The ungrouped rollup these sums describe.
    pub fn progress(&self) -> Progress {
        Progress {
            component_count: self.count,
            completion_percent: self.completion(),
            budget_hours: tidy(self.hours),
            earned_hours: tidy(self.earned),
            groups: Vec::new(),
        }
    }
}

/// The grouping key of a component. `area` and `system` use the component
/// attribute of that name, falling back to the drawing's field.
pub fn group_key(c: &Component, drawing: Option<&DrawingInfo>, by: GroupBy) -> Option<String> {
    let attr_or_drawing = |name: &str, from_drawing: fn(&DrawingInfo) -> &Option<String>| {
        c.attributes
            .get(name)
            .cloned()
            .or_else(|| drawing.and_then(|d| from_drawing(d).clone()))
    };
    match by {
        GroupBy::Drawing => Some(c.drawing_id.to_string()),
        GroupBy::Area => attr_or_drawing("area", |d| &d.area),
        GroupBy::System => attr_or_drawing("system", |d| &d.system),
        GroupBy::Kind => Some(c.kind.clone()),
        GroupBy::Template => Some(c.template_id.to_string()),
        GroupBy::TestPackage => c.attributes.get("test_package").cloned(),
    }
}

/// Rolls up components (deleted ones are skipped), optionally grouped. Each
/// component comes with its drawing's entry, for the area/system fallback.
pub fn rollup<'a, C: std::borrow::Borrow<Component>>(
    items: impl IntoIterator<Item = (C, Option<&'a DrawingInfo>)>,
    group_by: Option<GroupBy>,
) -> Progress {
    let mut total = Tally::default();
    let mut groups: BTreeMap<Option<String>, Tally> = BTreeMap::new();
    let mut labels: BTreeMap<Option<String>, String> = BTreeMap::new();
    for (c, drawing) in items {
        let c = c.borrow();
        if c.deleted {
            continue;
        }
        total.add(c);
        if let Some(by) = group_by {
            let key = group_key(c, drawing, by);
            if let (GroupBy::Drawing, Some(d)) = (by, drawing) {
                labels.entry(key.clone()).or_insert_with(|| d.number.clone());
            }
            groups.entry(key).or_default().add(c);
        }
    }
    Progress {
        groups: groups
            .into_iter()
            .map(|(key, a)| Group {
                label: labels.remove(&key),
                key,
                component_count: a.count,
                completion_percent: a.completion(),
                budget_hours: tidy(a.hours),
                earned_hours: tidy(a.earned),
            })
            .collect(),
        ..total.progress()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_boundaries() {
        assert_eq!(Status::of(0.0), Status::NotStarted);
        assert_eq!(Status::of(0.000001), Status::InProgress);
        assert_eq!(Status::of(99.999999), Status::InProgress);
        assert_eq!(Status::of(100.0), Status::Completed);
    }

    #[test]
    fn weighted_percent_is_exact_and_clamped() {
        // Weights 10/30/60 with the 1st and 3rd done.
        assert_eq!(weighted_percent([(10.0, 1.0), (30.0, 0.0), (60.0, 1.0)]), 70.0);
        // Thirds come out tidy, not 33.33333333333333.
        assert_eq!(weighted_percent([(1.0, 1.0), (1.0, 0.0), (1.0, 0.0)]), 33.333333);
        // Progress outside [0, 1] (over-reported quantity) is clamped.
        assert_eq!(weighted_percent([(1.0, 1.5), (1.0, -0.5)]), 50.0);
        assert_eq!(weighted_percent([]), 0.0);
    }

    #[test]
    fn group_by_parses_the_api_names() {
        for (s, g) in [
            ("drawing", GroupBy::Drawing),
            ("area", GroupBy::Area),
            ("system", GroupBy::System),
            ("kind", GroupBy::Kind),
            ("template", GroupBy::Template),
            ("test_package", GroupBy::TestPackage),
        ] {
            assert_eq!(GroupBy::parse(s), Some(g));
        }
        assert_eq!(GroupBy::parse("colour"), None);
    }
}
