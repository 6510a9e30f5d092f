//! Milestone templates: the rules of credit of a kind of work.
//!
//! A template fixes a component's workflow type and its weighted milestones.
//! Templates are immutable once created, which is what lets a drawing document
//! carry its own copy of every template its components use: the copy can never
//! go stale, and a drawing document is readable without its project document.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::ids::TemplateId;

/// How a milestone's progress is recorded.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowType {
    /// Each milestone done or not.
    Discrete,
    /// Each milestone 0–100 %.
    Percentage,
    /// Each milestone counts up to the component's quantity total.
    Quantity,
}

impl WorkflowType {
    /// The name used in the API and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Discrete => "discrete",
            Self::Percentage => "percentage",
            Self::Quantity => "quantity",
        }
    }

    /// What a milestone update of this type looks like, for error messages.
    pub fn expected_value(self) -> &'static str {
        match self {
            Self::Discrete => "{\"completed\": true|false}",
            Self::Percentage => "{\"percent\": 0..100}",
            Self::Quantity => "{\"quantity\": n >= 0} or {\"quantity_delta\": n}",
        }
    }
}

impl fmt::Display for WorkflowType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One milestone of a template: a key (stable, used in URLs), a display name
/// and its weight (credit).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MilestoneDef {
    pub key: String,
    pub name: String,
    pub weight: f64,
}

/// A template as stored and returned.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub id: TemplateId,
    pub name: String,
    pub workflow_type: WorkflowType,
    pub milestones: Vec<MilestoneDef>,
}

/// A template as requested. Validated by [`NewTemplate::validate`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewTemplate {
    pub name: String,
    pub workflow_type: WorkflowType,
    pub milestones: Vec<MilestoneDef>,
}

/// Longest name, tag or key we accept; longer is surely a mistake (a pasted
/// paragraph) and would bloat every document that carries it.
pub const MAX_TEXT_LEN: usize = 200;

/// Checks a required short text field: non-blank, at most [`MAX_TEXT_LEN`].
pub(crate) fn require_text(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(ModelError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(ModelError::invalid(
            field,
            format!("must be at most {MAX_TEXT_LEN} characters"),
        ));
    }
    Ok(())
}

impl NewTemplate {
    /// Checks every rule: a name, at least one milestone, keys non-empty,
    /// URL-safe and unique, weights finite and > 0.
    pub fn validate(&self) -> Result<()> {
        require_text("name", &self.name)?;
        if self.milestones.is_empty() {
            return Err(ModelError::invalid(
                "milestones",
                "a template needs at least one milestone",
            ));
        }
        let mut seen = HashSet::new();
        for (i, m) in self.milestones.iter().enumerate() {
            let at = |f: &str| format!("milestones[{i}].{f}");
            require_text(&at("key"), &m.key)?;
            if !m
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(ModelError::invalid(
                    at("key"),
                    "may contain only letters, digits, '_', '-' and '.' (it appears in URLs)",
                ));
            }
            require_text(&at("name"), &m.name)?;
            if !(m.weight.is_finite() && m.weight > 0.0) {
                return Err(ModelError::NonPositiveWeight {
                    field: at("weight"),
                    weight: m.weight,
                });
            }
            if !seen.insert(m.key.as_str()) {
                return Err(ModelError::DuplicateMilestoneKey {
                    field: at("key"),
                    key: m.key.clone(),
                });
            }
        }
        Ok(())
    }

    /// The template with its id, after validation.
    pub fn into_template(self, id: TemplateId) -> Result<Template> {
        self.validate()?;
        Ok(Template {
            id,
            name: self.name.trim().to_owned(),
            workflow_type: self.workflow_type,
            milestones: self.milestones,
        })
    }
}

impl Template {
    /// The milestone with this key, if the template has one.
    pub fn milestone(&self, key: &str) -> Option<&MilestoneDef> {
        self.milestones.iter().find(|m| m.key == key)
    }

    /// The keys, comma-separated, for error messages.
    pub fn keys(&self) -> String {
        self.milestones
            .iter()
            .map(|m| m.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(specs: &[(&str, f64)]) -> Vec<MilestoneDef> {
        specs
            .iter()
            .map(|(k, w)| MilestoneDef {
                key: (*k).into(),
                name: k.to_uppercase(),
                weight: *w,
            })
            .collect()
    }

    fn tpl(milestones: Vec<MilestoneDef>) -> NewTemplate {
        NewTemplate {
            name: "Spool".into(),
            workflow_type: WorkflowType::Discrete,
            milestones,
        }
    }

    #[test]
    fn a_sound_template_validates() {
        let t = tpl(ms(&[("receive", 5.0), ("erect", 30.0)]));
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn validation_rules_name_the_field() {
        let cases: Vec<(NewTemplate, &str, &str)> = vec![
            (
                tpl(ms(&[("a", 0.0)])),
                "non_positive_weight",
                "milestones[0].weight",
            ),
            (
                tpl(ms(&[("a", -3.0)])),
                "non_positive_weight",
                "milestones[0].weight",
            ),
            (
                tpl(ms(&[("a", f64::NAN)])),
                "non_positive_weight",
                "milestones[0].weight",
            ),
            (
                tpl(ms(&[("a", 1.0), ("a", 2.0)])),
                "duplicate_milestone_key",
                "milestones[1].key",
            ),
            (tpl(vec![]), "invalid", "milestones"),
            (tpl(ms(&[("", 1.0)])), "invalid", "milestones[0].key"),
            (tpl(ms(&[("a/b", 1.0)])), "invalid", "milestones[0].key"),
            (
                NewTemplate {
                    name: "  ".into(),
                    ..tpl(ms(&[("a", 1.0)]))
                },
                "invalid",
                "name",
            ),
        ];
        for (t, code, field) in cases {
            let err = t.validate().expect_err("must be rejected");
            assert_eq!((err.code(), err.field()), (code, Some(field)), "{err}");
        }
    }
}
