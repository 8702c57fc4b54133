//! Aligned plain-text tables, as printed by `get` and inside `describe`.
//!
//! Columns are left-aligned and separated by three spaces; the last column is not padded so
//! lines carry no trailing whitespace (scripts can split on runs of spaces). Widths count
//! characters, not bytes, so non-ASCII labels do not break the alignment.

/// A table: a header row and data rows of the same width.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "   ";

impl Table {
    /// A table with these column headers (written as given; callers pass them uppercase).
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Missing cells render empty; extra cells are kept and widen the table.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines joined by `\n`, each prefixed with `indent`, with a final newline.
    pub fn render_indented(&self, indent: &str) -> String {
        let n_columns = std::iter::once(&self.header)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; n_columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(display_width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                // Cells never contain newlines: they would break the alignment of every row.
                let cell = cell.replace('\n', " ");
                line.push_str(&cell);
                if i + 1 < n_columns {
                    let pad = width - display_width(&cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(GAP);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The table with no indentation.
    pub fn render(&self) -> String {
        self.render_indented("")
    }
}

fn display_width(cell: &str) -> usize {
    cell.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut table = Table::new(["NAME", "STATUS", "LABELS"]);
        table.row(["edge-1", "Ready", "site=berlin"]);
        table.row(["a-much-longer-name", "NotReady", ""]);
        assert_eq!(
            table.render(),
            "NAME                 STATUS     LABELS\n\
             edge-1               Ready      site=berlin\n\
             a-much-longer-name   NotReady\n"
        );
    }

    #[test]
    fn counts_characters_and_indents() {
        let mut table = Table::new(["K", "V"]);
        table.row(["größe", "1"]).row(["x", "2\nlines"]);
        assert_eq!(
            table.render_indented("  "),
            "  K       V\n  größe   1\n  x       2 lines\n"
        );
        assert!(!table.is_empty());
        assert_eq!(Table::new(["ONLY"]).render(), "ONLY\n");
    }
}
