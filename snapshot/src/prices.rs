//! The cost ledger's prices: a dated table of list prices per provider and
//! model family, shipped as `data/prices.toml` (generated from `LiteLLM`'s
//! price file by `cargo xtask prices`) and overridable with a file in the
//! same format, plus what a call cost under it. Recorded model names
//! (aliases, dated snapshots, `models/` and `vendor/` prefixes) resolve to
//! the family whose name is their longest prefix.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use time::Date;

use crate::model::TokenUsage;
use crate::provider::Provider;

/// The built-in table's text.
pub const BUILTIN_PRICES: &str = include_str!("../data/prices.toml");

/// Tokens per priced unit: prices are in dollars per million tokens.
const PER: f64 = 1_000_000.0;

/// Why a price table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The file could not be read.
    #[error("cannot read price table {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The text is not a price table (bad TOML, a missing or unknown key).
    #[error("cannot parse price table {origin}")]
    Parse {
        /// The file, or `built-in`.
        origin: String,
        /// What is wrong, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// `as_of` is not a plain date (`as_of = 2025-12-01`).
    #[error("{origin}: as_of must be a date such as 2025-12-01, not {value}")]
    AsOf {
        /// The file, or `built-in`.
        origin: String,
        /// The value as written.
        value: String,
    },
    /// A price is negative or not a number.
    #[error("{origin}: {provider} {model}: {field} = {value} is not a price")]
    BadPrice {
        /// The file, or `built-in`.
        origin: String,
        /// The entry's provider.
        provider: Provider,
        /// The entry's model.
        model: String,
        /// `input`, `output`, `cached_input` or `cache_write`.
        field: &'static str,
        /// The value as parsed.
        value: f64,
    },
    /// An entry has an empty model name.
    #[error("{origin}: a {provider} entry has an empty model name")]
    EmptyModel {
        /// The file, or `built-in`.
        origin: String,
        /// The entry's provider.
        provider: Provider,
    },
}

/// The prices of one model family, in dollars per million tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// The provider that sells it.
    pub provider: Provider,
    /// The family name recorded model names resolve to (`gpt-4o`).
    pub model: String,
    /// Input (prompt) tokens.
    pub input: f64,
    /// Output tokens, reasoning included.
    pub output: f64,
    /// Input tokens read from the prompt cache; `input` when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Input tokens written to the prompt cache; `input` when absent.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// Where a table's prices came from and when they were true.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriceSource {
    /// `built-in`, or the override file's path.
    pub origin: String,
    /// The date the prices were taken.
    pub as_of: Date,
}

impl fmt::Display for PriceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as of {}", self.origin, self.as_of)
    }
}

/// A price table: the built-in one, possibly with overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    /// The files the entries came from, oldest layer first.
    pub sources: Vec<PriceSource>,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// `price.model` normalised.
    key: String,
    price: ModelPrice,
}

/// What a call cost, in dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    /// Input tokens at the input price (cache reads and writes excluded).
    pub input_usd: f64,
    /// Cache reads at the cached-input price.
    pub cached_input_usd: f64,
    /// Cache writes at the cache-write price.
    pub cache_write_usd: f64,
    /// Output tokens at the output price.
    pub output_usd: f64,
    /// The sum.
    pub total_usd: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    as_of: toml::value::Datetime,
    #[serde(default)]
    model: Vec<ModelPrice>,
}

static BUILTIN: LazyLock<PriceTable> = LazyLock::new(|| {
    PriceTable::parse(BUILTIN_PRICES, "built-in")
        .expect("data/prices.toml is valid (checked by the prices tests)")
});

impl PriceTable {
    /// The table shipped with llmsim (`data/prices.toml`).
    pub fn builtin() -> Self {
        BUILTIN.clone()
    }

    /// The built-in table, with `overrides` applied when given.
    pub fn load(overrides: Option<&Path>) -> Result<Self, PriceError> {
        let mut table = Self::builtin();
        if let Some(path) = overrides {
            table.apply(&Self::read(path)?);
        }
        Ok(table)
    }

    /// Reads a table file.
    pub fn read(path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a table; `origin` names it in errors and in [`PriceSource`].
    pub fn parse(text: &str, origin: &str) -> Result<Self, PriceError> {
        let file: PriceFile = toml::from_str(text).map_err(|source| PriceError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        let as_of = plain_date(&file.as_of).ok_or_else(|| PriceError::AsOf {
            origin: origin.to_owned(),
            value: file.as_of.to_string(),
        })?;
        let mut entries = Vec::with_capacity(file.model.len());
        for price in file.model {
            check(&price, origin)?;
            entries.push(Entry {
                key: normalize(&price.model),
                price,
            });
        }
        Ok(Self {
            sources: vec![PriceSource {
                origin: origin.to_owned(),
                as_of,
            }],
            entries,
        })
    }

    /// Lays `overrides` over this table: an entry for the same provider and
    /// model replaces this table's, others are added.
    pub fn apply(&mut self, overrides: &Self) {
        for entry in &overrides.entries {
            match self
                .entries
                .iter_mut()
                .find(|e| e.price.provider == entry.price.provider && e.key == entry.key)
            {
                Some(existing) => *existing = entry.clone(),
                None => self.entries.push(entry.clone()),
            }
        }
        self.sources.extend(overrides.sources.iter().cloned());
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> impl Iterator<Item = &ModelPrice> {
        self.entries.iter().map(|e| &e.price)
    }

    /// The price of `model` as recorded with `provider`: the entry of that
    /// provider whose family name is the model's longest prefix, else (for
    /// `OpenRouter`, generic hosts such as Azure `OpenAI`, or a model another
    /// provider sells) the longest match among all entries.
    pub fn lookup(&self, provider: Provider, model: &str) -> Option<&ModelPrice> {
        let name = normalize(model);
        if name.is_empty() {
            return None;
        }
        let best = |same_provider: bool| {
            self.entries
                .iter()
                .filter(|e| !same_provider || e.price.provider == provider)
                .filter(|e| family_matches(&e.key, &name))
                .max_by_key(|e| e.key.len())
                .map(|e| &e.price)
        };
        best(true).or_else(|| best(false))
    }

    /// What `usage` cost for `model` with `provider`; `None` when the table
    /// has no price for it. Cached input tokens are billed at the cached
    /// rate, cache writes at the cache-write rate, the rest of the input at
    /// the input rate.
    pub fn cost(&self, provider: Provider, model: &str, usage: &TokenUsage) -> Option<Cost> {
        self.lookup(provider, model).map(|price| price.cost(usage))
    }

    /// The sources, for a report line: `built-in as of 2025-12-01`.
    pub fn describe(&self) -> String {
        self.sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", overridden by ")
    }
}

impl ModelPrice {
    /// Whether a recorded `model` name resolves to this entry's family when
    /// nothing longer matches: `gpt-4o` covers `gpt-4o-2024-08-06`, not
    /// `gpt-4oo`.
    pub fn covers(&self, model: &str) -> bool {
        family_matches(&normalize(&self.model), &normalize(model))
    }

    /// What `usage` costs at these prices.
    pub fn cost(&self, usage: &TokenUsage) -> Cost {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let fresh = usage.input_tokens - cached - written;
        #[expect(
            clippy::cast_precision_loss,
            reason = "token counts are far below 2^52"
        )]
        let dollars = |tokens: u64, per_million: f64| tokens as f64 * per_million / PER;
        let input_usd = dollars(fresh, self.input);
        let cached_input_usd = dollars(cached, self.cached_input.unwrap_or(self.input));
        let cache_write_usd = dollars(written, self.cache_write.unwrap_or(self.input));
        let output_usd = dollars(usage.output_tokens, self.output);
        Cost {
            input_usd,
            cached_input_usd,
            cache_write_usd,
            output_usd,
            total_usd: input_usd + cached_input_usd + cache_write_usd + output_usd,
        }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Self) {
        self.input_usd += other.input_usd;
        self.cached_input_usd += other.cached_input_usd;
        self.cache_write_usd += other.cache_write_usd;
        self.output_usd += other.output_usd;
        self.total_usd += other.total_usd;
    }
}

fn check(price: &ModelPrice, origin: &str) -> Result<(), PriceError> {
    if price.model.trim().is_empty() {
        return Err(PriceError::EmptyModel {
            origin: origin.to_owned(),
            provider: price.provider,
        });
    }
    let fields = [
        ("input", Some(price.input)),
        ("output", Some(price.output)),
        ("cached_input", price.cached_input),
        ("cache_write", price.cache_write),
    ];
    for (field, value) in fields {
        if let Some(value) = value
            && !(value.is_finite() && value >= 0.0)
        {
            return Err(PriceError::BadPrice {
                origin: origin.to_owned(),
                provider: price.provider,
                model: price.model.clone(),
                field,
                value,
            });
        }
    }
    Ok(())
}

/// A TOML local date (`2025-12-01`) as a [`Date`].
fn plain_date(value: &toml::value::Datetime) -> Option<Date> {
    if value.time.is_some() || value.offset.is_some() {
        return None;
    }
    let date = value.date?;
    let month = time::Month::try_from(date.month).ok()?;
    Date::from_calendar_date(i32::from(date.year), month, date.day).ok()
}

/// A model name as compared: lowercase, without a path (`models/`, or
/// `OpenRouter`'s `vendor/`), `.` and `_` read as `-`.
pub fn normalize(model: &str) -> String {
    let model = model.trim();
    let name = model.rsplit('/').next().unwrap_or(model);
    name.chars()
        .map(|c| match c {
            '.' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `family` names `model`: equal, or a prefix that ends where a
/// version or date begins (`-`, `:`, `@`), so `gpt-4` never prices `gpt-4o`.
fn family_matches(family: &str, model: &str) -> bool {
    model
        .strip_prefix(family)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', ':', '@']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            ..TokenUsage::default()
        }
    }

    #[test]
    fn the_builtin_table_parses_and_covers_the_current_families() {
        let table = PriceTable::parse(BUILTIN_PRICES, "built-in").unwrap();
        assert_eq!(table, PriceTable::builtin());
        assert_eq!(table.sources[0].as_of.year(), 2026);
        for (provider, model) in [
            (Provider::OpenAi, "gpt-4o"),
            (Provider::OpenAi, "gpt-4o-mini"),
            (Provider::OpenAi, "gpt-4.1"),
            (Provider::OpenAi, "gpt-4.1-mini"),
            (Provider::OpenAi, "gpt-4.1-nano"),
            (Provider::OpenAi, "o3"),
            (Provider::OpenAi, "o4-mini"),
            (Provider::OpenAi, "gpt-5"),
            (Provider::OpenAi, "gpt-5-mini"),
            (Provider::OpenAi, "gpt-5-nano"),
            (Provider::OpenAi, "text-embedding-3-small"),
            (Provider::OpenAi, "text-embedding-3-large"),
            (Provider::OpenAi, "gpt-5.4-mini"),
            (Provider::OpenAi, "gpt-5.5"),
            (Provider::Anthropic, "claude-opus-4-5"),
            (Provider::Anthropic, "claude-opus-4-7"),
            (Provider::Anthropic, "claude-sonnet-4-5"),
            (Provider::Anthropic, "claude-sonnet-4-6"),
            (Provider::Anthropic, "claude-haiku-4-5"),
            (Provider::Anthropic, "claude-opus-5"),
            (Provider::Anthropic, "claude-sonnet-5"),
            (Provider::Anthropic, "claude-haiku-5-5"),
            (Provider::Gemini, "gemini-2.5-pro"),
            (Provider::Gemini, "gemini-2.5-flash"),
            (Provider::Gemini, "gemini-2.5-flash-lite"),
            (Provider::Xai, "grok-4.20"),
            (Provider::Xai, "grok-code-fast"),
        ] {
            let price = table
                .lookup(provider, model)
                .unwrap_or_else(|| panic!("{model}"));
            assert_eq!(
                normalize(&price.model),
                normalize(model),
                "{model} is its own family"
            );
            assert_eq!(price.provider, provider, "{model}");
        }
        // One entry per provider and family.
        let mut keys: Vec<_> = table
            .entries
            .iter()
            .map(|e| (e.price.provider, e.key.clone()))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn the_builtin_table_has_litellm_prices() {
        assert!(
            BUILTIN_PRICES.contains("LiteLLM 1.110.2")
                && BUILTIN_PRICES.contains("GENERATED by `cargo xtask prices`"),
            "the header names the source and the generator"
        );
        let table = PriceTable::builtin();
        assert_eq!(table.sources[0].as_of.to_string(), "2026-11-20");
        // LiteLLM's figures, in $ per token: input, output, cache read, cache write.
        for (provider, model, input, output, cached_input, cache_write) in [
            (
                Provider::OpenAi,
                "gpt-4o",
                2.5e-06,
                1e-05,
                Some(1.25e-06),
                None,
            ),
            (
                Provider::OpenAi,
                "gpt-4o-mini",
                1.5e-07,
                6e-07,
                Some(7.5e-08),
                None,
            ),
            (
                Provider::OpenAi,
                "gpt-5",
                1.25e-06,
                1e-05,
                Some(1.25e-07),
                None,
            ),
            (
                Provider::OpenAi,
                "text-embedding-3-small",
                2e-08,
                0.0,
                None,
                None,
            ),
            (
                Provider::Anthropic,
                "claude-haiku-4-5",
                1e-06,
                5e-06,
                Some(1e-07),
                Some(1.25e-06),
            ),
            (
                Provider::Anthropic,
                "claude-sonnet-4-5",
                3e-06,
                1.5e-05,
                Some(3e-07),
                Some(3.75e-06),
            ),
            (
                Provider::Gemini,
                "gemini-2.5-flash",
                3e-07,
                2.5e-06,
                Some(3e-08),
                None,
            ),
            (
                Provider::Gemini,
                "gemini-2.5-pro",
                1.25e-06,
                1e-05,
                Some(1.25e-07),
                None,
            ),
            (
                Provider::Xai,
                "grok-4.20",
                1.25e-06,
                2.5e-06,
                Some(2e-07),
                None,
            ),
        ] {
            let price = table
                .lookup(provider, model)
                .unwrap_or_else(|| panic!("{model}"));
            assert_eq!((price.provider, price.model.as_str()), (provider, model));
            let per_million = |per_token: f64| per_token * PER;
            let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
            assert!(close(price.input, per_million(input)), "{price:?}");
            assert!(close(price.output, per_million(output)), "{price:?}");
            for (ours, theirs) in [
                (price.cached_input, cached_input),
                (price.cache_write, cache_write),
            ] {
                assert_eq!(ours.is_some(), theirs.is_some(), "{price:?}");
                if let (Some(ours), Some(theirs)) = (ours, theirs) {
                    assert!(close(ours, per_million(theirs)), "{price:?}");
                }
            }
        }
    }

    #[test]
    fn aliases_and_snapshots_resolve_to_their_family() {
        let table = PriceTable::builtin();
        for (provider, recorded, family) in [
            (Provider::OpenAi, "gpt-4o-2024-08-06", "gpt-4o"),
            (Provider::OpenAi, "gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
            (Provider::OpenAi, "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            (Provider::OpenAi, "GPT-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            (Provider::OpenAi, "gpt-5-2025-08-07", "gpt-5"),
            (Provider::OpenAi, "o4-mini-2025-04-16", "o4-mini"),
            (Provider::OpenAi, "gpt-4-0613", "gpt-4"),
            (
                Provider::Anthropic,
                "claude-opus-4-6-20260205",
                "claude-opus-4-6",
            ),
            (
                Provider::Anthropic,
                "claude-haiku-4-5-latest",
                "claude-haiku-4-5",
            ),
            (
                Provider::Anthropic,
                "claude-opus-5-20260514",
                "claude-opus-5",
            ),
            (
                Provider::Anthropic,
                "claude-opus-5-5-20260805",
                "claude-opus-5-5",
            ),
            (
                Provider::Anthropic,
                "claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5",
            ),
            (
                Provider::Gemini,
                "models/gemini-2.5-flash-001",
                "gemini-2.5-flash",
            ),
            (
                Provider::Gemini,
                "gemini-2.5-flash-preview-05-20",
                "gemini-2.5-flash",
            ),
            (
                Provider::Gemini,
                "gemini-2.5-flash-lite",
                "gemini-2.5-flash-lite",
            ),
            (Provider::Xai, "grok-4.20-0309-reasoning", "grok-4.20"),
            (Provider::Xai, "grok-code-fast-1", "grok-code-fast"),
            (
                Provider::OpenRouter,
                "anthropic/claude-sonnet-4.5",
                "claude-sonnet-4-5",
            ),
            (Provider::OpenRouter, "openai/gpt-4o-mini", "gpt-4o-mini"),
            (Provider::Generic, "gpt-4o", "gpt-4o"),
            (
                Provider::Anthropic,
                "claude-sonnet-4-5@20250929",
                "claude-sonnet-4-5",
            ),
        ] {
            let price = table
                .lookup(provider, recorded)
                .unwrap_or_else(|| panic!("{recorded}"));
            assert_eq!(price.model, family, "{recorded}");
            assert!(price.covers(recorded), "{recorded}");
        }
        for (provider, unknown) in [
            (Provider::OpenAi, "gpt-4oo"),
            (Provider::OpenAi, "ft:gpt-4o-mini:org::abc"),
            (Provider::Generic, "llama3:8b"),
            (Provider::Gemini, ""),
            (Provider::Gemini, "models/"),
        ] {
            assert_eq!(table.lookup(provider, unknown), None, "{unknown}");
        }
    }

    #[test]
    fn cached_tokens_are_billed_at_the_cached_rate() {
        let table = PriceTable::builtin();
        // gpt-4o: $2.50 in, $1.25 cached, $10 out per million.
        let cost = table
            .cost(
                Provider::OpenAi,
                "gpt-4o-2024-08-06",
                &usage(1_000_000, 400_000, 100_000),
            )
            .unwrap();
        assert!((cost.input_usd - 1.5).abs() < 1e-9, "{cost:?}");
        assert!((cost.cached_input_usd - 0.5).abs() < 1e-9, "{cost:?}");
        assert!((cost.output_usd - 1.0).abs() < 1e-9, "{cost:?}");
        assert!((cost.total_usd - 3.0).abs() < 1e-9, "{cost:?}");
        // Anthropic cache writes at 1.25 times input.
        let u = TokenUsage {
            input_tokens: 3_050,
            output_tokens: 40,
            cached_input_tokens: 2_000,
            cache_write_tokens: 1_000,
            reasoning_tokens: 0,
        };
        let cost = table
            .cost(Provider::Anthropic, "claude-sonnet-4-5", &u)
            .unwrap();
        let expected = (50.0 * 3.0 + 2_000.0 * 0.30 + 1_000.0 * 3.75 + 40.0 * 15.0) / 1e6;
        assert!((cost.total_usd - expected).abs() < 1e-12, "{cost:?}");
        // A model without a cached price bills cached tokens as input; counts
        // that do not add up never underflow.
        let price = table.lookup(Provider::OpenAi, "gpt-4o-2024-05-13").unwrap();
        let cost = price.cost(&usage(10, 50, 0));
        assert!((cost.total_usd - 50e-6).abs() < 1e-12, "{cost:?}");
        assert_eq!(
            table.cost(Provider::Generic, "llama3", &usage(1, 0, 1)),
            None
        );
    }

    #[test]
    fn overrides_replace_and_add() {
        let text = "as_of = 2026-06-01\n\
            [[model]]\nprovider = \"openai\"\nmodel = \"GPT-4o\"\ninput = 1.0\noutput = 2.0\n\
            [[model]]\nprovider = \"generic\"\nmodel = \"llama3\"\ninput = 0.0\noutput = 0.0\n";
        let mut table = PriceTable::builtin();
        let n = table.entries().count();
        table.apply(&PriceTable::parse(text, "mine.toml").unwrap());
        assert_eq!(table.entries().count(), n + 1);
        let price = table.lookup(Provider::OpenAi, "gpt-4o-2024-11-20").unwrap();
        assert_eq!((price.input, price.cached_input), (1.0, None));
        assert!(table.lookup(Provider::Generic, "llama3:8b").is_some());
        assert_eq!(
            table.describe(),
            "built-in as of 2026-11-20, overridden by mine.toml as of 2026-06-01"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = PriceTable::load(Some(&path)).unwrap();
        assert_eq!(loaded.sources.len(), 2);
        assert!(matches!(
            PriceTable::load(Some(&dir.path().join("missing.toml"))),
            Err(PriceError::Read { .. })
        ));
    }

    #[test]
    fn bad_tables_are_errors() {
        let cases = [
            (
                "[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1.0\noutput = 1.0\n",
                "Parse",
            ),
            ("as_of = \"2025-01-01\"\n", "Parse"),
            ("as_of = 2025-01-01T10:00:00\n", "AsOf"),
            (
                "as_of = 2025-01-01\n[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = -1.0\noutput = 1.0\n",
                "BadPrice",
            ),
            (
                "as_of = 2025-01-01\n[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = nan\noutput = 1.0\n",
                "BadPrice",
            ),
            (
                "as_of = 2025-01-01\n[[model]]\nprovider = \"openai\"\nmodel = \" \"\ninput = 1.0\noutput = 1.0\n",
                "EmptyModel",
            ),
            (
                "as_of = 2025-01-01\n[[model]]\nprovider = \"openai\"\nmodel = \"x\"\ninput = 1.0\noutput = 1.0\ncached = 1.0\n",
                "Parse",
            ),
            (
                "as_of = 2025-01-01\n[[model]]\nprovider = \"azure\"\nmodel = \"x\"\ninput = 1.0\noutput = 1.0\n",
                "Parse",
            ),
        ];
        for (text, kind) in cases {
            let err = PriceTable::parse(text, "t.toml").unwrap_err();
            assert!(format!("{err:?}").starts_with(kind), "{text}: {err:?}");
            assert!(err.to_string().contains("t.toml"), "{err}");
        }
    }
}
