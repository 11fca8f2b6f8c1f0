//! Region from IP with a MaxMind database (City or Country, GeoLite2/GeoIP2 or compatible).

use crate::event::Region;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot open GeoIP database {path}: {reason} (set enrich.geoip.database to a MaxMind City or Country .mmdb file)")]
    Open { path: PathBuf, reason: String },
    #[error("enrich.geoip.residency_zones puts country {country} in both {first} and {second}")]
    DuplicateCountry {
        country: String,
        first: String,
        second: String,
    },
}

pub struct RegionResolver {
    reader: maxminddb::Reader<Vec<u8>>,
    zones: HashMap<String, String>,
}

/// The part of a City or Country record the pipeline reads.
#[derive(Deserialize)]
struct Location<'a> {
    #[serde(borrow, default)]
    country: Option<Code<'a>>,
    #[serde(borrow, default)]
    continent: Option<Code<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Code<'a>>>,
}

#[derive(Deserialize)]
struct Code<'a> {
    #[serde(default, alias = "code")]
    iso_code: Option<&'a str>,
}

impl RegionResolver {
    pub fn open(
        path: &Path,
        residency_zones: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Self, RegionError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| RegionError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut zones = HashMap::new();
        for (zone, countries) in residency_zones {
            for country in countries {
                let country = country.to_ascii_uppercase();
                if let Some(first) = zones.insert(country.clone(), zone.clone()) {
                    return Err(RegionError::DuplicateCountry {
                        country,
                        first,
                        second: zone.clone(),
                    });
                }
            }
        }
        Ok(Self { reader, zones })
    }

    /// The region of `ip`; missing, private and unmatched addresses give [`Region::unknown`].
    pub fn resolve(&self, ip: Option<&str>) -> Region {
        let Some(ip) = ip.and_then(|s| s.parse::<IpAddr>().ok()) else {
            return Region::unknown();
        };
        // `::ffff:a.b.c.d` is an IPv4 address: look it up as one, as MaxMind's readers do.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if !is_public(&ip) {
            return Region::unknown();
        }
        let Ok(found) = self.reader.lookup(ip) else {
            return Region::unknown();
        };
        let Ok(Some(location)) = found.decode::<Location>() else {
            return Region::unknown();
        };
        let Some(country) = location.country.and_then(|c| c.iso_code) else {
            return Region::unknown();
        };
        let country = country.to_string();
        Region {
            residency_zone: self
                .zones
                .get(&country)
                .cloned()
                .unwrap_or_else(|| "OTHER".into()),
            subdivision: location
                .subdivisions
                .and_then(|s| s.into_iter().next())
                .and_then(|s| s.iso_code)
                .map(str::to_string),
            continent: location
                .continent
                .and_then(|c| c.iso_code)
                .unwrap_or(Region::UNKNOWN)
                .to_string(),
            country,
        }
    }
}

fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> RegionResolver {
        let zones = [("EU".to_string(), vec!["DE".to_string(), "FR".to_string()])].into();
        RegionResolver::open(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/test-city.mmdb")),
            &zones,
        )
        .unwrap()
    }

    #[test]
    fn missing_private_and_garbage_ips_are_unknown_not_errors() {
        let r = resolver();
        for ip in [
            None,
            Some("10.1.2.3"),
            Some("192.168.0.1"),
            Some("::1"),
            Some("not an ip"),
        ] {
            assert_eq!(r.resolve(ip), Region::unknown(), "{ip:?}");
        }
    }

    #[test]
    fn ipv4_and_ipv6_resolve_to_country_subdivision_continent_and_zone() {
        let r = resolver();
        let de = r.resolve(Some("5.100.1.1"));
        assert_eq!(
            (
                de.country.as_str(),
                de.subdivision.as_deref(),
                de.continent.as_str(),
                de.residency_zone.as_str()
            ),
            ("DE", Some("BE"), "EU", "EU")
        );
        assert_eq!(r.resolve(Some("::ffff:5.100.1.1")), de);
        let us = r.resolve(Some("2600:1700::1"));
        assert_eq!(
            (us.country.as_str(), us.residency_zone.as_str()),
            ("US", "OTHER")
        );
        let sg = r.resolve(Some("121.6.2.2"));
        assert_eq!((sg.country.as_str(), sg.subdivision), ("SG", None));
    }

    #[test]
    fn public_addresses_outside_the_database_are_unknown() {
        let r = resolver();
        assert_eq!(r.resolve(Some("11.22.33.44")), Region::unknown());
        assert_eq!(r.resolve(Some("2001:db8::1")), Region::unknown());
    }

    #[test]
    fn a_country_in_two_zones_is_refused() {
        let zones = [
            ("EU".to_string(), vec!["DE".to_string()]),
            ("X".to_string(), vec!["de".to_string()]),
        ]
        .into();
        let err = RegionResolver::open(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/geoip/test-city.mmdb")),
            &zones,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("country DE"));
    }
}
