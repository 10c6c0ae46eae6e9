//! The `edgesync` command (work in progress).

fn main() -> anyhow::Result<()> {
    Ok(())
}
