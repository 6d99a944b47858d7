"""Generated README sections are replaced between their markers only, and a missing section changes nothing."""
from nnunet_isrg.utils.readme import replace_readme_section


def test_replace_only_between_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN t -->\nold table\n<!-- END t -->\noutro\n")
    assert replace_readme_section("t", "| a |\n|---|\n| 1 |\n", readme)
    assert readme.read_text() == "intro\n<!-- BEGIN t -->\n| a |\n|---|\n| 1 |\n<!-- END t -->\noutro\n"
    before = readme.read_text()
    assert not replace_readme_section("missing", "x", readme)
    assert readme.read_text() == before
    assert "no section 'missing'" in capsys.readouterr().err
    assert not replace_readme_section("t", "x", tmp_path / "absent.md")
