//! Printing objects as a table or JSON, and errors as one line.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;

use crate::globals::Format;

/// Joins an error and its causes into the single line the CLI prints on stderr.
pub fn one_line_error(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Library errors often already embed their source's text; don't print it twice.
        if parts.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        parts.push(text.replace('\n', " "));
    }
    parts.join(": ")
}

/// Prints `rows` (a list of objects) either as JSON or as a table with `headers`, using
/// `cells` to turn one object into that row's cells.
pub fn print_list<T: Serialize>(
    format: Format,
    headers: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Format::Table => {
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_header(headers.to_vec());
            for row in rows {
                table.add_row(cells(row));
            }
            println!("{table}");
        }
    }
    Ok(())
}

/// Prints one object either as JSON or as a two-column key/value table.
pub fn print_object<T: Serialize>(
    format: Format,
    object: &T,
    fields: &[(&str, String)],
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(object)?),
        Format::Table => {
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            for (key, value) in fields {
                table.add_row(vec![key.to_string(), value.clone()]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
