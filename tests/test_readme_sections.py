"""Generated README sections are replaced between their markers only, and a missing section changes nothing.

Writing the README is the scripts' job (``scripts/script_support.py``), not the installed package's."""
import re

from conftest import REPO, load_script

PACKAGE = REPO / "nnunet_isrg"


def test_replace_only_between_markers(tmp_path, capsys):
    replace_readme_section = load_script("script_support").replace_readme_section
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN t -->\nold table\n<!-- END t -->\noutro\n")
    assert replace_readme_section("t", "| a |\n|---|\n| 1 |\n", readme)
    assert readme.read_text() == "intro\n<!-- BEGIN t -->\n| a |\n|---|\n| 1 |\n<!-- END t -->\noutro\n"
    before = readme.read_text()
    assert not replace_readme_section("missing", "x", readme)
    assert readme.read_text() == before
    assert "no section 'missing'" in capsys.readouterr().err
    assert not replace_readme_section("t", "x", tmp_path / "absent.md")


def test_demo_section_shows_each_attribute_confusion_matrix_truth_in_rows():
    demo = load_script("demo")
    out = {"trainer": "T", "fold": "0", "dataset": "D", "n_cases": 3, "dice_per_click": [0.5, 0.75],
           "timings_s": {"total_s": 60.0, "train_and_validate_s": 30.0},
           "attribute_accuracy": {"surface": 2 / 3}, "attribute_majority_rate": {"surface": 2 / 3},
           "attribute_accuracy_mean": 2 / 3,
           "attribute_confusion": {"surface": {"classes": ["Well", "Ill"], "matrix": [[1, 1], [0, 1]]}}}
    text = demo.demo_markdown(out)
    assert "| mean Dice | 0.500 | 0.750 |" in text
    assert "| surface | 0.667 | 0.667 |" in text
    assert "| surface | Well | Ill |\n|---|---|---|\n| Well | 1 | 1 |\n| Ill | 0 | 1 |" in text
    del out["attribute_confusion"]  # summaries written before the matrices were recorded
    assert "Confusion" not in demo.demo_markdown(out)
    assert "CVPR 2025" not in text  # a model validated before the box protocol existed
    out["cvpr25"] = {"dice_per_interaction": [0.7, 0.8, 0.85], "auc_dice": 0.78, "final_dice": 0.85}
    text = demo.demo_markdown(out)
    assert "| mean Dice | 0.700 | 0.800 | 0.850 | 0.780 |" in text
    assert "box + 2 | AUC |" in text and "0.700 vs 0.500 (+0.200)" in text and "0.850 vs 0.750 after 2 clicks" in text


def test_every_generated_section_a_script_writes_is_in_the_readme():
    """Each name passed to ``replace_readme_section`` by a script has its two markers in the README."""
    names = set()
    for script in (REPO / "scripts").glob("*.py"):
        text = script.read_text()
        names |= set(re.findall(r'replace_readme_section\("([\w-]+)"', text))
        names |= set(re.findall(r'^(?:README_)?SECTION = "([\w-]+)"', text, re.MULTILINE))
    names |= {f"realdata-cv-{key}" for key in load_script("benchmark_realdata").DATASETS}  # one per dataset
    readme = (REPO / "README.md").read_text()
    assert names >= {"demo-results", "model-benchmark", "session-benchmark", "phantom-results", "realdata-results",
                     "phantom-recoverability", "phantom-difficulty"}
    for name in names:
        assert readme.count(f"<!-- BEGIN {name} -->") == 1 and readme.count(f"<!-- END {name} -->") == 1, name


def test_the_package_neither_writes_the_readme_nor_sets_up_script_environments():
    assert not (PACKAGE / "utils").exists()
    for module in PACKAGE.rglob("*.py"):
        text = module.read_text()
        assert "replace_readme_section" not in text and "nnunet_env(" not in text, module
