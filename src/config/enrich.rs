//! The derived fields: GeoIP regions and the segment rules.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    pub geoip: GeoIpConfig,
    /// Segment name → CEL expression over public, sensitive and derived fields, or
    /// `{rule: EXPR, purpose: NAME}` for a segment that needs the user's consent to a purpose.
    #[serde(default)]
    pub segments: BTreeMap<String, SegmentConfig>,
}

/// A segment rule and the consent purpose it needs, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentConfig {
    pub rule: String,
    pub purpose: Option<String>,
}

impl<'de> Deserialize<'de> for SegmentConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            rule: String,
            #[serde(default)]
            purpose: Option<String>,
        }
        let value = serde_yaml::Value::deserialize(d)?;
        if let serde_yaml::Value::String(rule) = value {
            return Ok(SegmentConfig {
                rule,
                purpose: None,
            });
        }
        let full: Full = serde_yaml::from_value(value).map_err(serde::de::Error::custom)?;
        Ok(SegmentConfig {
            rule: full.rule,
            purpose: full.purpose,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind City or Country database (GeoLite2/GeoIP2 or compatible).
    pub database: PathBuf,
    /// Residency zone → ISO country codes. Countries in no zone get `OTHER`.
    #[serde(default)]
    pub residency_zones: BTreeMap<String, Vec<String>>,
}
