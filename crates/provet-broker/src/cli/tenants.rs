//! `provet-broker tenants list|show|add|remove`; here `list` (paged through, printed as JSON
//! lines, the views `tenants show` prints, or a table for people, one line per tenant) and
//! `show`; `tenants_add.rs` and `tenants_remove.rs` the other two.

use std::io::Write;

use broker_api::UseCases;
use broker_api::views::TenantView;
use broker_domain::GrantState;
use broker_service::TenantFilter;
use tabwriter::TabWriter;

use super::{Output, TenantsCommand, offline_use_cases, read_only_use_cases};
use crate::config::Settings;

pub(super) async fn run(settings: &Settings, cmd: TenantsCommand) -> anyhow::Result<()> {
    let use_cases = if matches!(cmd, TenantsCommand::Add { .. }) {
        offline_use_cases(settings).await?
    } else {
        read_only_use_cases(settings).await?
    };
    match cmd {
        TenantsCommand::List {
            status,
            credentials,
            grant_state,
            grant_type,
            discovery,
            limit,
            output,
        } => {
            let filter = TenantFilter {
                status,
                credentials,
                grant_state,
                grant_type,
                discovery,
                ..Default::default()
            };
            let output = output.unwrap_or_else(Output::for_stdout);
            list(&use_cases, filter, limit, output).await?;
        }
        TenantsCommand::Add { file } => {
            super::tenants_add::run(&use_cases.hookups, &use_cases.audit, file.as_deref()).await?;
        }
        TenantsCommand::Show { provet_id } => {
            let tenant = use_cases.tenant_admin.tenant(provet_id.get()).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&TenantView::from(tenant))?
            );
        }
        TenantsCommand::Remove { provet_id, yes } => {
            super::tenants_remove::run(&use_cases, provet_id, yes).await?;
        }
    }
    Ok(())
}

/// Prints up to `limit` tenants that pass `filter`, fetched page by page.
async fn list(
    use_cases: &UseCases,
    filter: TenantFilter,
    limit: u64,
    output: Output,
) -> anyhow::Result<()> {
    let mut printer = Printer::new(output, std::io::stdout().lock())?;
    let mut after = None;
    let mut left = limit;
    while left > 0 {
        let page = use_cases
            .tenant_admin
            .tenants(&TenantFilter {
                after,
                limit: left.min(500),
                ..filter.clone()
            })
            .await?;
        let Some(last) = page.last().map(|t| t.provet_id) else {
            break;
        };
        left = left.saturating_sub(page.len() as u64);
        for t in page {
            printer.tenant(&TenantView::from(t))?;
        }
        after = Some(last);
    }
    printer.finish()
}

const HEADER: [&str; 9] = [
    "PROVET_ID",
    "STATUS",
    "GRANT_TYPE",
    "CLIENT_ID",
    "CREDENTIALS",
    "DISCOVERY",
    "GRANTS",
    "DEPARTMENTS",
    "UPDATED_AT",
];

/// Prints tenants as they come (page by page); `finish` writes out the table.
pub enum Printer<W: Write> {
    Json(W),
    /// The table is aligned once every row is known.
    Table(TabWriter<W>),
}

impl<W: Write> Printer<W> {
    /// A table starts with its header row (alone when nothing matches, so that an empty
    /// list still reads as a table).
    pub fn new(output: Output, out: W) -> anyhow::Result<Self> {
        Ok(match output {
            Output::Json => Self::Json(out),
            Output::Table => {
                let mut table = TabWriter::new(out).padding(2);
                writeln!(table, "{}", HEADER.join("\t"))?;
                Self::Table(table)
            }
        })
    }

    pub fn tenant(&mut self, tenant: &TenantView) -> anyhow::Result<()> {
        match self {
            Self::Json(out) => {
                serde_json::to_writer(&mut *out, tenant)?;
                writeln!(out)?;
            }
            Self::Table(table) => writeln!(table, "{}", row(tenant).join("\t"))?,
        }
        Ok(())
    }

    /// Writes out what is buffered (the whole table).
    pub fn finish(mut self) -> anyhow::Result<()> {
        match &mut self {
            Self::Json(out) => out.flush()?,
            Self::Table(table) => table.flush()?,
        }
        Ok(())
    }
}

/// One table line's cells, in `HEADER`'s order.
fn row(t: &TenantView) -> [String; 9] {
    let client = t.client.as_ref();
    [
        t.provet_id.to_string(),
        t.status.to_string(),
        client.map_or_else(|| "-".to_owned(), |c| c.grant_type.to_string()),
        client.map_or_else(|| "-".to_owned(), |c| cell(&c.client_id)),
        t.credentials.state.to_string(),
        t.discovery.state.to_string(),
        grants_cell(t.grants.iter().map(|g| g.state)),
        if t.departments.is_empty() {
            "-".to_owned()
        } else {
            let ids: Vec<String> = t.departments.iter().map(i64::to_string).collect();
            ids.join(",")
        },
        t.updated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    ]
}

/// Grants counted by state (`active:2,revoked:1`), `-` for none.
fn grants_cell(states: impl Iterator<Item = GrantState>) -> String {
    let states: Vec<GrantState> = states.collect();
    let counts: Vec<String> = GrantState::ALL
        .iter()
        .filter_map(|state| {
            let n = states.iter().filter(|s| *s == state).count();
            (n > 0).then(|| format!("{state}:{n}"))
        })
        .collect();
    if counts.is_empty() {
        "-".to_owned()
    } else {
        counts.join(",")
    }
}

/// A value from outside (a client id Provet sent) fit for a terminal cell: control
/// characters (tabs, newlines, escape sequences) would break the columns or drive the
/// terminal, so each becomes `?`.
fn cell(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cell_counts_by_state_in_declaration_order() {
        assert_eq!(grants_cell(std::iter::empty()), "-");
        assert_eq!(
            grants_cell(
                [
                    GrantState::Revoked,
                    GrantState::Active,
                    GrantState::Active,
                    GrantState::ReauthorizationRequired,
                ]
                .into_iter()
            ),
            "active:2,reauthorization_required:1,revoked:1"
        );
    }

    #[test]
    fn cell_replaces_control_characters() {
        assert_eq!(cell("a\tb\nc\u{1b}[31m"), "a?b?c?[31m");
        assert_eq!(cell("plain-client"), "plain-client");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let mut out = Vec::new();
        Printer::new(Output::Table, &mut out)
            .unwrap()
            .finish()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("PROVET_ID  STATUS"), "{text}");
    }
}
