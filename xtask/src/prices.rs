//! `cargo xtask prices`: writes `snapshot/data/prices.toml` from `LiteLLM`'s
//! model price file (MIT licensed, shipped inside the `litellm` Python
//! package). It owns the pinned `LiteLLM` release and its date, the mapping from
//! `LiteLLM`'s providers and model names to llmsim's, and the table's text.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use llmsim_snapshot::{
    prices::{ModelPrice, PriceTable, normalize},
    provider::Provider,
};
use serde_json::{Map, Value};

/// The `LiteLLM` release the table is generated from.
const LITELLM_VERSION: &str = "1.110.2";
/// That release's date on `PyPI`: the table's `as_of`.
const LITELLM_RELEASED: &str = "2026-11-20";
/// The price file inside the `litellm` package.
const PRICE_FILE: &str = "model_prices_and_context_window_backup.json";
/// Where the table goes, from the repository root.
const TABLE: &str = "snapshot/data/prices.toml";
/// `LiteLLM` modes whose calls are priced per input and output token.
const MODES: [&str; 4] = ["chat", "completion", "responses", "embedding"];

/// Reads `LiteLLM`'s price file (`from`, or the installed `litellm` package's)
/// and writes the built-in price table.
pub fn run(from: Option<&Path>) -> anyhow::Result<()> {
    let file = match from {
        Some(path) => path.to_owned(),
        None => installed_package()?.join(PRICE_FILE),
    };
    let version = package_version(&file)?;
    if version != LITELLM_VERSION {
        bail!(
            "{} is from litellm {version}, but the table is pinned to {LITELLM_VERSION}: \
             install it (pip install --no-deps litellm=={LITELLM_VERSION}) or move the pin \
             and its PyPI release date in xtask/src/prices.rs",
            file.display()
        );
    }
    let json =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let models: Map<String, Value> =
        serde_json::from_str(&json).with_context(|| format!("parsing {}", file.display()))?;
    let prices = select(&models);
    let text = table(&prices);
    PriceTable::parse(&text, "the generated table").context("checking the generated table")?;
    let out = llmsim_tests::repo_root().join(TABLE);
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "xtask: {TABLE}: {} prices from litellm {LITELLM_VERSION} ({})",
        prices.len(),
        file.display()
    );
    Ok(())
}

/// The installed `litellm` package's directory, found without importing it
/// (so its dependencies need not be installed).
fn installed_package() -> anyhow::Result<PathBuf> {
    let script = "import importlib.util as u; s = u.find_spec('litellm'); \
                  print(s.submodule_search_locations[0] if s else '')";
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .context("running python3 to find the litellm package")?;
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || dir.is_empty() {
        bail!(
            "no litellm package found by python3 ({}): install it with \
             `pip install --no-deps litellm=={LITELLM_VERSION}` or pass --from",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(dir))
}

/// The version of the `litellm` package `file` belongs to, from the
/// `litellm-<version>.dist-info` directory beside the package's directory (an
/// installed package, or an unpacked wheel).
fn package_version(file: &Path) -> anyhow::Result<String> {
    let site = file
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not inside a litellm package", file.display()))?;
    let entries = std::fs::read_dir(site).with_context(|| format!("listing {}", site.display()))?;
    let mut versions = Vec::new();
    for entry in entries {
        let name = entry
            .with_context(|| format!("listing {}", site.display()))?
            .file_name();
        if let Some(version) = name
            .to_str()
            .and_then(|n| n.strip_prefix("litellm-"))
            .and_then(|n| n.strip_suffix(".dist-info"))
        {
            versions.push(version.to_owned());
        }
    }
    match versions.as_slice() {
        [version] => Ok(version.clone()),
        [] => bail!(
            "no litellm-*.dist-info in {}: cannot tell which litellm release {} is from",
            site.display(),
            file.display()
        ),
        _ => bail!(
            "several litellm releases in {} ({}): cannot tell which one {} is from",
            site.display(),
            versions.join(", "),
            file.display()
        ),
    }
}

/// llmsim's provider for a `LiteLLM` `litellm_provider` value: the providers'
/// own APIs only, not the clouds that resell their models (`vertex_ai-*`,
/// `bedrock`, `azure`, ...).
fn provider(litellm_provider: &str) -> Option<Provider> {
    match litellm_provider {
        "openai" | "text-completion-openai" => Some(Provider::OpenAi),
        "anthropic" => Some(Provider::Anthropic),
        "gemini" => Some(Provider::Gemini),
        "xai" => Some(Provider::Xai),
        "openrouter" => Some(Provider::OpenRouter),
        _ => None,
    }
}

/// $ per token as $ per million tokens, rounded to a millionth of a dollar
/// per million so that `1.25e-06` reads `1.25`.
fn per_million(per_token: f64) -> f64 {
    (per_token * 1e12).round() / 1e6
}

/// One `LiteLLM` entry as an llmsim price, when it is a priced token model of a
/// provider llmsim knows. The second value says whether `LiteLLM`'s key named
/// the provider (`gemini/gemini-2.5-pro` rather than `gemini-2.5-pro`).
fn price(key: &str, entry: &Value) -> Option<(ModelPrice, bool)> {
    let litellm_provider = entry.get("litellm_provider")?.as_str()?;
    let provider = provider(litellm_provider)?;
    if !MODES.contains(&entry.get("mode")?.as_str()?) {
        return None;
    }
    let cost = |field: &str| entry.get(field).and_then(Value::as_f64).map(per_million);
    let (input, output) = (
        cost("input_cost_per_token")?,
        cost("output_cost_per_token")?,
    );
    if input == 0.0 && output == 0.0 {
        return None;
    }
    let stripped = key
        .strip_prefix(litellm_provider)
        .and_then(|k| k.strip_prefix('/'));
    Some((
        ModelPrice {
            provider,
            model: stripped.unwrap_or(key).to_owned(),
            input,
            output,
            cached_input: cost("cache_read_input_token_cost"),
            cache_write: cost("cache_creation_input_token_cost"),
        },
        stripped.is_some(),
    ))
}

fn same_prices(a: &ModelPrice, b: &ModelPrice) -> bool {
    (a.input, a.output, a.cached_input, a.cache_write)
        == (b.input, b.output, b.cached_input, b.cache_write)
}

fn provider_rank(provider: Provider) -> usize {
    Provider::ALL
        .iter()
        .position(|p| *p == provider)
        .unwrap_or(Provider::ALL.len())
}

/// The table's entries: `LiteLLM`'s priced models of llmsim's providers, less
/// those a shorter entry already prices the same (dated snapshots, `-latest`
/// aliases), sorted by provider and model. When two `LiteLLM` keys give one
/// model name, the key that names the provider wins, then the first in order.
fn select(models: &Map<String, Value>) -> Vec<ModelPrice> {
    let mut candidates: Vec<(ModelPrice, bool, &str)> = models
        .iter()
        .filter_map(|(key, entry)| price(key, entry).map(|(p, named)| (p, named, key.as_str())))
        .collect();
    candidates.sort_by_cached_key(|(p, named, key)| {
        let name = normalize(&p.model);
        (provider_rank(p.provider), name.len(), name, !named, *key)
    });
    let mut kept: Vec<ModelPrice> = Vec::new();
    for (price, _, _) in candidates {
        let family = kept
            .iter()
            .filter(|k| k.provider == price.provider && k.covers(&price.model))
            .max_by_key(|k| normalize(&k.model).len());
        let redundant = family.is_some_and(|f| {
            same_prices(f, &price) || normalize(&f.model) == normalize(&price.model)
        });
        if !redundant {
            kept.push(price);
        }
    }
    kept.sort_by(|a, b| {
        (provider_rank(a.provider), &a.model).cmp(&(provider_rank(b.provider), &b.model))
    });
    kept
}

/// A price as TOML writes a float: `10.0`, `0.125`.
fn number(value: f64) -> String {
    let text = value.to_string();
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// The table's text: the header, `as_of`, then one `[[model]]` per price,
/// grouped by provider.
fn table(prices: &[ModelPrice]) -> String {
    let mut out = format!(
        "\
# llmsim's built-in price table: list prices in US dollars per million tokens.
#
# GENERATED by `cargo xtask prices` (xtask/src/prices.rs): do not edit by hand.
# Source: LiteLLM {LITELLM_VERSION} (released {LITELLM_RELEASED}), the file
# litellm/{PRICE_FILE} in its PyPI package,
# https://github.com/BerriAI/litellm, MIT licence. To refresh it: move the pin
# (release and PyPI date) in xtask/src/prices.rs, `pip install --no-deps
# litellm==<release>`, then `cargo xtask prices`.
#
# THESE PRICES ARE AS OF THE `as_of` DATE BELOW. Providers change them, add
# models and retire others; llmsim cannot know about that. Check them against
# the providers' pricing pages before trusting a dollar figure, and override
# any of them with `--prices FILE` (a file in this same format: its entries
# replace the built-in entries for the same provider and model, and add new
# ones; it must have its own `as_of`).
#
# Each [[model]] entry:
#   provider      openai, anthropic, gemini, xai, openrouter or generic
#   model         a model family; a recorded model name resolves to the entry
#                 whose name is its longest prefix after normalisation
#                 (lowercase, any `models/` or `vendor/` prefix dropped, `.`
#                 read as `-`), ending where the recorded name ends or at a
#                 `-`, `:` or `@`: `gpt-4o-2024-08-06` is `gpt-4o`,
#                 `claude-sonnet-4-5-20250929` is `claude-sonnet-4-5`,
#                 `models/gemini-2.5-flash-001` is `gemini-2.5-flash`, and
#                 OpenRouter's `openai/gpt-4o-mini` is found too.
#   input         $ per million input (prompt) tokens
#   output        $ per million output tokens, reasoning included
#   cached_input  $ per million input tokens read from the prompt cache
#                 (optional: billed at `input` when absent)
#   cache_write   $ per million input tokens written to the prompt cache
#                 (optional, Anthropic's 5-minute cache write: `input` when absent)
#
# From LiteLLM: the entries of the providers' own APIs (litellm_provider
# openai, text-completion-openai, anthropic, gemini, xai, openrouter; not the
# clouds that resell them) in modes chat, completion, responses and
# embedding, with LiteLLM's `provider/` prefix dropped from the name. Its
# base per-token prices: standard (not batch, flex or priority) rates, the
# lower tier where a price depends on the prompt length. Left out: entries
# without a price (or priced 0 for input and output), and dated snapshots and
# aliases that a shorter entry already prices the same.

as_of = {LITELLM_RELEASED}
"
    );
    let mut section = None;
    for price in prices {
        if section != Some(price.provider) {
            section = Some(price.provider);
            let title = format!("# --- {} ", price.provider);
            out.extend(["\n", &format!("{title:-<79}"), "\n"]);
        }
        let mut fields = vec![
            format!("provider = \"{}\"", price.provider),
            format!("model = \"{}\"", price.model),
            format!("input = {}", number(price.input)),
        ];
        if let Some(cached) = price.cached_input {
            fields.push(format!("cached_input = {}", number(cached)));
        }
        if let Some(write) = price.cache_write {
            fields.push(format!("cache_write = {}", number(write)));
        }
        fields.push(format!("output = {}", number(price.output)));
        out.push_str("\n[[model]]\n");
        for field in fields {
            out.extend([field.as_str(), "\n"]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn litellm_entries_become_prices_per_million() {
        let models = json!({
            "sample_spec": {"litellm_provider": "one of ...", "mode": "chat"},
            "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-06},
            "gpt-4o-2024-08-06": {"litellm_provider": "openai", "mode": "chat",
                "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-06},
            "gpt-4o-2024-05-13": {"litellm_provider": "openai", "mode": "chat",
                "input_cost_per_token": 5e-06, "output_cost_per_token": 1.5e-05},
            "gpt-image-1": {"litellm_provider": "openai", "mode": "image_generation",
                "input_cost_per_token": 5e-06, "output_cost_per_token": 4e-05},
            "openai/container": {"litellm_provider": "openai", "mode": "chat"},
            "claude-haiku-4-5": {"litellm_provider": "anthropic", "mode": "chat",
                "input_cost_per_token": 1e-06, "output_cost_per_token": 5e-06,
                "cache_read_input_token_cost": 1e-07, "cache_creation_input_token_cost": 1.25e-06},
            "vertex_ai/claude-3-5-haiku": {"litellm_provider": "vertex_ai-anthropic_models",
                "mode": "chat", "input_cost_per_token": 1e-06, "output_cost_per_token": 5e-06},
            "gemini/gemini-2.5-flash": {"litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06},
            "gemini-exp-1206": {"litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 3e-07, "output_cost_per_token": 2.5e-06},
            "gemini/gemini-exp-1206": {"litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 1e-07, "output_cost_per_token": 4e-07},
            "gemini/gemma-3-27b-it": {"litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 0, "output_cost_per_token": 0},
            "xai/grok-4.20": {"litellm_provider": "xai", "mode": "chat",
                "input_cost_per_token": 1.25e-06, "output_cost_per_token": 2.5e-06},
            "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding",
                "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0},
            "openrouter/anthropic/claude-3.5-sonnet": {"litellm_provider": "openrouter",
                "mode": "chat", "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
        });
        let Value::Object(models) = models else {
            unreachable!()
        };
        let prices = select(&models);
        let names: Vec<_> = prices
            .iter()
            .map(|p| format!("{} {}", p.provider, p.model))
            .collect();
        assert_eq!(
            names,
            [
                "openai gpt-4o",
                "openai gpt-4o-2024-05-13",
                "openai text-embedding-3-small",
                "anthropic claude-haiku-4-5",
                "gemini gemini-2.5-flash",
                "gemini gemini-exp-1206",
                "xai grok-4.20",
                "openrouter anthropic/claude-3.5-sonnet",
            ]
        );
        let find = |model: &str| prices.iter().find(|p| p.model == model).unwrap();
        let gpt = find("gpt-4o");
        assert_eq!(
            (gpt.input, gpt.output, gpt.cached_input),
            (2.5, 10.0, Some(1.25))
        );
        assert_eq!(gpt.cache_write, None);
        let claude = find("claude-haiku-4-5");
        assert_eq!(
            (claude.cached_input, claude.cache_write),
            (Some(0.1), Some(1.25))
        );
        assert_eq!(find("gemini-exp-1206").input, 0.1, "the gemini/ key wins");
        assert_eq!(find("text-embedding-3-small").input, 0.02);

        let text = table(&prices);
        let parsed = PriceTable::parse(&text, "generated").unwrap();
        assert_eq!(parsed.entries().cloned().collect::<Vec<_>>(), prices);
        assert_eq!(parsed.sources[0].as_of.to_string(), LITELLM_RELEASED);
        assert_eq!(
            table(&select(&models)),
            text,
            "the same input gives the same file"
        );
    }
}
