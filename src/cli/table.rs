//! The CLI's tables (`check`, `search`, its aggregations): plain columns two spaces apart,
//! no borders, so that they read well in a terminal and stay easy to `grep` and `cut`.

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

/// A table with these column headers; `right` lists the columns aligned right (numbers).
pub fn plain(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Prints `table` without the trailing spaces of its last column.
pub fn print(table: &Table) {
    println!("{}", table.trim_fmt());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_two_spaces_apart_numbers_align_right_and_lines_end_without_spaces() {
        let mut table = plain(&["segment", "profiles"], &[1]);
        table.add_row(["vip", "7"]);
        table.add_row(["frequent_buyer", "1234"]);
        assert_eq!(
            table.trim_fmt(),
            "segment         profiles\nvip                    7\nfrequent_buyer      1234"
        );
    }
}
