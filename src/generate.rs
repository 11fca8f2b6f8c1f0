//! Realistic synthetic profile change events: several events per user with increasing
//! versions, a mix of countries and IPs, some deletes, late and duplicate deliveries, and on
//! request a share of invalid events. Deterministic for a seed. Feeds the samples, the tests,
//! `produce` and the benchmarks.
//!
//! Invalid events have fresh user ids and `source` = `generator/invalid:<kind>`, so a test can
//! tell what the final state must be without running the pipeline's own decoder.

use crate::schema::value_to_avro_json;
use apache_avro::types::Value;
use apache_avro::Schema;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use uuid::Uuid;

/// The networks of the shipped test GeoIP database, so generated IPs resolve to regions.
const NETWORKS_CSV: &str = include_str!("../geoip/networks.csv");
/// 2026-01-01T00:00:00Z: generated events start here, so runs are reproducible.
const EPOCH_MILLIS: i64 = 1_767_225_600_000;

const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "Dmitri", "Emma", "Felix", "Grace", "Hiro", "Ines", "Jonas", "Kaito",
    "Lena", "Mateo", "Nora", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Uma", "Victor",
    "Wen", "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Schmidt",
    "Dubois",
    "García",
    "Rossi",
    "Nowak",
    "Johansson",
    "Murphy",
    "Smith",
    "Silva",
    "Tanaka",
    "Kim",
    "Patel",
    "Okafor",
    "Nguyen",
    "Müller",
    "Jensen",
    "Costa",
    "Novak",
    "Ali",
    "Brown",
];
const STREETS: &[&str] = &[
    "Main Street",
    "Hauptstraße",
    "Rue de la Paix",
    "Calle Mayor",
    "Via Roma",
    "Kings Road",
    "Oak Avenue",
    "Market Lane",
];
const PLANS: &[&str] = &[
    "free",
    "free",
    "free",
    "basic",
    "basic",
    "pro",
    "enterprise",
];
const SOURCES: &[&str] = &[
    "generator/signup-service",
    "generator/account-service",
    "generator/crm-sync",
    "generator/mobile-app",
];

/// What the generator wrote.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Generated {
    pub valid: u64,
    pub invalid: u64,
    pub users: u64,
}

/// One generated event.
#[derive(Debug, Clone)]
pub enum GeneratedEvent {
    /// A well-formed event (valid, or schema-valid but semantically invalid).
    Record { value: Value, valid: bool },
    /// A line that is not a well-formed event at all (JSON lines only).
    Malformed(Vec<u8>),
}

struct Network {
    country: String,
    addr: IpAddr,
    prefix: u8,
}

struct User {
    id: Uuid,
    index: u64,
    country: usize,
    version: i64,
    deleted: bool,
    erased: bool,
    late: Option<Value>,
    last: Option<Value>,
}

/// An endless, deterministic stream of events.
pub struct EventGenerator {
    rng: ChaCha8Rng,
    networks: Vec<Network>,
    countries: Vec<String>,
    users: Vec<User>,
    invalid_ratio: f64,
    allow_malformed: bool,
    privacy_ratio: f64,
    queue: std::collections::VecDeque<GeneratedEvent>,
    clock: i64,
}

impl EventGenerator {
    /// `expected_events` sizes the user pool (about four events per user).
    pub fn new(seed: u64, expected_events: u64, invalid_ratio: f64, allow_malformed: bool) -> Self {
        let mut networks = Vec::new();
        for line in NETWORKS_CSV.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            let Some((addr, prefix)) = cols.first().and_then(|n| n.split_once('/')) else {
                continue;
            };
            let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u8>()) else {
                continue;
            };
            networks.push(Network {
                country: cols.get(1).unwrap_or(&"").to_string(),
                addr,
                prefix,
            });
        }
        let mut countries: Vec<String> = networks.iter().map(|n| n.country.clone()).collect();
        countries.sort();
        countries.dedup();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_users = (expected_events / 4).max(1);
        let users = (0..n_users)
            .map(|index| User {
                id: uuid_from(&mut rng),
                index,
                country: rng.random_range(0..countries.len().max(1)),
                version: 0,
                deleted: false,
                erased: false,
                late: None,
                last: None,
            })
            .collect();
        Self {
            rng,
            networks,
            countries,
            users,
            invalid_ratio,
            allow_malformed,
            privacy_ratio: 0.0,
            queue: Default::default(),
            clock: EPOCH_MILLIS,
        }
    }

    /// Mixes in consent decisions and, rarely, erasures: `ratio` of the valid events.
    pub fn with_privacy_events(mut self, ratio: f64) -> Self {
        self.privacy_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    pub fn user_count(&self) -> u64 {
        self.users.len() as u64
    }

    pub fn next_event(&mut self) -> GeneratedEvent {
        if let Some(e) = self.queue.pop_front() {
            return e;
        }
        self.clock += self.rng.random_range(1..2_000);
        if self.rng.random_bool(self.invalid_ratio.clamp(0.0, 1.0)) {
            return self.invalid();
        }
        let mut u = self.rng.random_range(0..self.users.len());
        for _ in 0..8 {
            if !self.users[u].erased {
                break;
            }
            u = self.rng.random_range(0..self.users.len());
        }
        if self.privacy_ratio > 0.0
            && !self.users[u].erased
            && self.rng.random_bool(self.privacy_ratio)
        {
            return self.privacy(u);
        }
        // Sometimes deliver a duplicate of the user's previous event.
        if self.users[u].last.is_some() && self.rng.random_bool(0.01) {
            let value = self.users[u].last.clone().expect("checked");
            return GeneratedEvent::Record { value, valid: true };
        }
        let step = self.rng.random_range(1..=3);
        self.users[u].version += step;
        let delete =
            !self.users[u].deleted && self.users[u].version > 1 && self.rng.random_bool(0.03);
        let value = self.change(u, delete);
        self.users[u].deleted = delete;
        self.users[u].last = Some(value.clone());
        if let Some(late) = self.users[u].late.take() {
            // The held-back older event arrives after this newer one: it must lose.
            self.queue.push_back(GeneratedEvent::Record {
                value: late,
                valid: true,
            });
        } else if self.rng.random_bool(0.02) {
            self.users[u].late = Some(value);
            return self.next_event();
        }
        GeneratedEvent::Record { value, valid: true }
    }

    /// A consent decision (mostly) or an erasure of user `u`.
    fn privacy(&mut self, u: usize) -> GeneratedEvent {
        self.users[u].version += 1;
        let (user_id, version) = (self.users[u].id, self.users[u].version);
        let null = Value::Union(0, Box::new(Value::Null));
        let value = if self.rng.random_bool(0.05) {
            self.users[u].erased = true;
            event(
                Head {
                    event_id: uuid_from(&mut self.rng),
                    user_id,
                    op: "ERASE",
                    version,
                    at: self.clock,
                    source: "generator/privacy-portal",
                },
                null.clone(),
                null,
            )
        } else {
            let purpose =
                ["marketing", "analytics", "personalization"][self.rng.random_range(0..3)];
            let consent = Value::Record(vec![
                ("purpose".into(), Value::String(purpose.into())),
                ("granted".into(), Value::Boolean(self.rng.random_bool(0.85))),
                ("policy_version".into(), Value::String("2026-01".into())),
            ]);
            let consent = Value::Union(1, Box::new(consent));
            event(
                Head {
                    event_id: uuid_from(&mut self.rng),
                    user_id,
                    op: "CONSENT",
                    version,
                    at: self.clock,
                    source: "generator/consent-banner",
                },
                null,
                consent,
            )
        };
        self.users[u].last = Some(value.clone());
        GeneratedEvent::Record { value, valid: true }
    }

    fn change(&mut self, u: usize, delete: bool) -> Value {
        let user_id = self.users[u].id;
        let version = self.users[u].version;
        let profile = if delete {
            Value::Union(0, Box::new(Value::Null))
        } else {
            Value::Union(1, Box::new(self.profile(u)))
        };
        let source = SOURCES[self.rng.random_range(0..SOURCES.len())];
        let head = Head {
            event_id: uuid_from(&mut self.rng),
            user_id,
            op: if delete { "DELETE" } else { "UPSERT" },
            version,
            at: self.clock,
            source,
        };
        event(head, profile, Value::Union(0, Box::new(Value::Null)))
    }

    fn profile(&mut self, u: usize) -> Value {
        let user = &self.users[u];
        let (index, country) = (
            user.index,
            self.countries
                .get(user.country)
                .cloned()
                .unwrap_or_else(|| "US".into()),
        );
        let first = FIRST[(index as usize) % FIRST.len()];
        let last = LAST[(index as usize / FIRST.len()) % LAST.len()];
        let ascii = |s: &str| {
            s.chars()
                .filter(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_lowercase()
        };
        let email = format!(
            "{}.{}.{index}@mail{}.example.com",
            ascii(first),
            ascii(last),
            index % 7
        );
        let phone = format!("+{} {:03} {:07}", 10 + index % 89, 100 + index % 900, index);
        let ip = self.ip_for(&country);
        let (locale, tz) = locale_of(&country);
        let rng = &mut self.rng;
        let last_seen = self.clock - rng.random_range(0..200i64) * 86_400_000;
        let lifetime = (rng.random_range(0.0..1.0f64).powi(3) * 5000.0 * 100.0).round() / 100.0;
        let orders = rng.random_range(0..30);
        let plan = PLANS[rng.random_range(0..PLANS.len())];
        let some = |v: Value| Value::Union(1, Box::new(v));
        let address = Value::Record(vec![
            (
                "street".into(),
                Value::String(format!(
                    "{} {}",
                    1 + index % 199,
                    STREETS[(index as usize) % STREETS.len()]
                )),
            ),
            ("city".into(), Value::String(format!("City-{}", index % 50))),
            (
                "postal_code".into(),
                Value::String(format!("{:05}", index % 99_999)),
            ),
            ("region".into(), Value::Union(0, Box::new(Value::Null))),
            ("country".into(), Value::String(country.clone())),
        ]);
        let preferences = HashMap::from([
            (
                "newsletter".to_string(),
                Value::String(["weekly", "monthly", "never"][rng.random_range(0..3)].into()),
            ),
            (
                "theme".to_string(),
                Value::String(["dark", "light"][rng.random_range(0..2)].into()),
            ),
        ]);
        let marketing = Value::Record(vec![
            ("lifetime_value".into(), Value::Double(lifetime)),
            ("order_count".into(), Value::Int(orders)),
            (
                "last_order_at".into(),
                if orders > 0 {
                    some(Value::TimestampMillis(last_seen - 86_400_000))
                } else {
                    Value::Union(0, Box::new(Value::Null))
                },
            ),
            ("plan".into(), Value::String(plan.into())),
        ]);
        let status = if rng.random_bool(0.05) {
            (1, "SUSPENDED")
        } else {
            (0, "ACTIVE")
        };
        Value::Record(vec![
            ("email".into(), some(Value::String(email))),
            ("phone".into(), some(Value::String(phone))),
            (
                "display_name".into(),
                some(Value::String(format!("{first} {last}"))),
            ),
            (
                "avatar_url".into(),
                some(Value::String(format!(
                    "https://avatars.example.com/{}.png",
                    self.users[u].id
                ))),
            ),
            (
                "birth_date".into(),
                some(Value::Date(rng.random_range(-7000..14000))),
            ),
            ("postal_address".into(), some(address)),
            ("last_seen_ip".into(), some(Value::String(ip))),
            ("locale".into(), some(Value::String(locale.into()))),
            ("time_zone".into(), some(Value::String(tz.into()))),
            (
                "last_seen_at".into(),
                some(Value::TimestampMillis(last_seen)),
            ),
            ("preferences".into(), Value::Map(preferences)),
            ("marketing".into(), some(marketing)),
            ("status".into(), Value::Enum(status.0, status.1.into())),
        ])
    }

    /// An address in one of the country's networks; sometimes a private or unmatched one.
    fn ip_for(&mut self, country: &str) -> String {
        let roll = self.rng.random_range(0..100);
        if roll < 3 {
            return format!(
                "10.{}.{}.{}",
                self.rng.random_range(0..256),
                self.rng.random_range(0..256),
                self.rng.random_range(1..255)
            );
        }
        if roll < 5 {
            return format!("198.51.100.{}", self.rng.random_range(1..255));
        }
        let options: Vec<usize> = (0..self.networks.len())
            .filter(|&i| self.networks[i].country == country)
            .collect();
        let Some(&pick) = options.get(self.rng.random_range(0..options.len().max(1))) else {
            return "203.0.113.7".into();
        };
        let net = &self.networks[pick];
        match net.addr {
            IpAddr::V4(a) => {
                let host_bits = 32 - u32::from(net.prefix.min(32));
                let span = if host_bits >= 32 {
                    u32::MAX
                } else {
                    (1u32 << host_bits) - 1
                };
                let offset = if span > 2 {
                    self.rng.random_range(1..span)
                } else {
                    0
                };
                Ipv4Addr::from(u32::from(a) | offset).to_string()
            }
            IpAddr::V6(a) => {
                let low: u64 = self.rng.random();
                Ipv6Addr::from(u128::from(a) | u128::from(low)).to_string()
            }
        }
    }

    fn invalid(&mut self) -> GeneratedEvent {
        let kinds: &[&str] = if self.allow_malformed {
            &[
                "bad_ip",
                "no_profile",
                "zero_version",
                "bad_email",
                "unknown_operation",
                "truncated",
                "wrong_type",
                "missing_user",
            ]
        } else {
            &[
                "bad_ip",
                "no_profile",
                "zero_version",
                "bad_email",
                "unknown_operation",
            ]
        };
        let kind = kinds[self.rng.random_range(0..kinds.len())];
        let source = format!("generator/invalid:{kind}");
        let user_id = uuid_from(&mut self.rng);
        let event_id = uuid_from(&mut self.rng);
        let donor = self.rng.random_range(0..self.users.len());
        let mut profile = self.profile(donor);
        let set = |profile: &mut Value, field: &str, v: Value| {
            if let Value::Record(fields) = profile {
                for (name, value) in fields.iter_mut() {
                    if name == field {
                        *value = v.clone();
                    }
                }
            }
        };
        let (op, version, profile) = match kind {
            "bad_ip" => {
                set(
                    &mut profile,
                    "last_seen_ip",
                    Value::Union(1, Box::new(Value::String("300.1.2.999".into()))),
                );
                ("UPSERT", 1, Value::Union(1, Box::new(profile)))
            }
            "no_profile" => ("UPSERT", 1, Value::Union(0, Box::new(Value::Null))),
            "zero_version" => ("UPSERT", 0, Value::Union(1, Box::new(profile))),
            "bad_email" => {
                set(
                    &mut profile,
                    "email",
                    Value::Union(1, Box::new(Value::String("not-an-email".into()))),
                );
                ("UPSERT", 1, Value::Union(1, Box::new(profile)))
            }
            "unknown_operation" => ("UNKNOWN", 1, Value::Union(1, Box::new(profile))),
            _ => ("UPSERT", 1, Value::Union(1, Box::new(profile))),
        };
        let null = Value::Union(0, Box::new(Value::Null));
        let head = Head {
            event_id,
            user_id,
            op,
            version,
            at: self.clock,
            source: &source,
        };
        let value = event(head, profile, null);
        match kind {
            "truncated" | "wrong_type" | "missing_user" => {
                GeneratedEvent::Malformed(malformed(kind, &value))
            }
            _ => GeneratedEvent::Record {
                value,
                valid: false,
            },
        }
    }
}

/// Turns a well-formed event into a malformed JSON line of the given kind.
fn malformed(kind: &str, value: &Value) -> Vec<u8> {
    let schema = Schema::parse_str(include_str!("../schemas/profile_change.avsc"))
        .expect("shipped schema parses");
    let mut json = value_to_avro_json(value, &schema);
    match kind {
        "wrong_type" => json["version"] = serde_json::Value::from("seven"),
        "missing_user" => {
            json.as_object_mut().expect("record").remove("user_id");
        }
        _ => {}
    }
    let mut line = serde_json::to_vec(&json).expect("serialisable");
    if kind == "truncated" {
        line.truncate(line.len() / 2);
    }
    line
}

/// The envelope fields of one event.
struct Head<'a> {
    event_id: Uuid,
    user_id: Uuid,
    op: &'a str,
    version: i64,
    at: i64,
    source: &'a str,
}

fn event(head: Head<'_>, profile: Value, consent: Value) -> Value {
    let Head {
        event_id,
        user_id,
        op,
        version,
        at,
        source,
    } = head;
    let op_index = match op {
        "UPSERT" => 0,
        "DELETE" => 1,
        "ERASE" => 2,
        "CONSENT" => 3,
        _ => 4,
    };
    Value::Record(vec![
        ("event_id".into(), Value::Uuid(event_id)),
        ("user_id".into(), Value::Uuid(user_id)),
        ("operation".into(), Value::Enum(op_index, op.into())),
        ("version".into(), Value::Long(version)),
        ("occurred_at".into(), Value::TimestampMillis(at)),
        ("source".into(), Value::String(source.into())),
        ("consent".into(), consent),
        ("profile".into(), profile),
    ])
}

fn uuid_from(rng: &mut ChaCha8Rng) -> Uuid {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn locale_of(country: &str) -> (&'static str, &'static str) {
    match country {
        "DE" => ("de-DE", "Europe/Berlin"),
        "FR" => ("fr-FR", "Europe/Paris"),
        "NL" => ("nl-NL", "Europe/Amsterdam"),
        "IE" => ("en-IE", "Europe/Dublin"),
        "ES" => ("es-ES", "Europe/Madrid"),
        "IT" => ("it-IT", "Europe/Rome"),
        "PL" => ("pl-PL", "Europe/Warsaw"),
        "SE" => ("sv-SE", "Europe/Stockholm"),
        "GB" => ("en-GB", "Europe/London"),
        "US" => ("en-US", "America/New_York"),
        "CA" => ("en-CA", "America/Toronto"),
        "BR" => ("pt-BR", "America/Sao_Paulo"),
        "MX" => ("es-MX", "America/Mexico_City"),
        "JP" => ("ja-JP", "Asia/Tokyo"),
        "SG" => ("en-SG", "Asia/Singapore"),
        "AU" => ("en-AU", "Australia/Sydney"),
        "IN" => ("hi-IN", "Asia/Kolkata"),
        "KR" => ("ko-KR", "Asia/Seoul"),
        "ZA" => ("en-ZA", "Africa/Johannesburg"),
        "NG" => ("en-NG", "Africa/Lagos"),
        _ => ("en-US", "UTC"),
    }
}

/// The output format of `generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Avro,
    Jsonl,
}

/// Writes `count` events to `out`.
/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub count: u64,
    pub seed: u64,
    /// Share of events that are invalid on purpose.
    pub invalid_ratio: f64,
    /// Share of valid events that are consent decisions or erasures.
    pub privacy_ratio: f64,
    pub format: Format,
}

pub fn write_file(
    out: &std::path::Path,
    spec: Spec,
    schema: &Schema,
) -> std::io::Result<Generated> {
    use std::io::Write;
    let Spec {
        count,
        seed,
        invalid_ratio,
        privacy_ratio,
        format,
    } = spec;
    let mut gen = EventGenerator::new(seed, count, invalid_ratio, format == Format::Jsonl)
        .with_privacy_events(privacy_ratio);
    let mut summary = Generated {
        users: gen.user_count(),
        ..Generated::default()
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::io::BufWriter::new(std::fs::File::create(out)?);
    // The library's messages quote the values: report only the error's kind.
    let to_io = |e: apache_avro::Error| std::io::Error::other(crate::schema::avro_error_kind(&e));
    match format {
        Format::Jsonl => {
            let mut file = file;
            for _ in 0..count {
                match gen.next_event() {
                    GeneratedEvent::Record { value, valid } => {
                        serde_json::to_writer(&mut file, &value_to_avro_json(&value, schema))?;
                        if valid {
                            summary.valid += 1
                        } else {
                            summary.invalid += 1
                        }
                    }
                    GeneratedEvent::Malformed(line) => {
                        file.write_all(&line)?;
                        summary.invalid += 1;
                    }
                }
                file.write_all(b"\n")?;
            }
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Format::Avro => {
            let mut writer = apache_avro::Writer::new(schema, file).map_err(to_io)?;
            for _ in 0..count {
                if let GeneratedEvent::Record { value, valid } = gen.next_event() {
                    writer.append_value(value).map_err(to_io)?;
                    if valid {
                        summary.valid += 1
                    } else {
                        summary.invalid += 1
                    }
                }
            }
            writer.flush().map_err(to_io)?;
        }
    }
    Ok(summary)
}
