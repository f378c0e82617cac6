"""README.md and docs/: generated blocks, links, and benchmarks/tables.py that renders some of them."""
import glob
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "benchmarks"))  # last: nothing there may shadow anything
import readme_blocks  # noqa: E402
import tables  # noqa: E402

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def test_the_readme_stays_a_front_page():
    with open(PAGES[0]) as f:
        assert len(f.readlines()) <= 220


def test_every_generated_block_is_closed_and_lives_in_one_page():
    homes: dict[str, str] = {}
    for page in PAGES:
        text = open(page).read()
        begins = re.findall(r"<!-- (\w+):begin -->", text)
        for name in begins:
            assert text.count(f"<!-- {name}:end -->") == 1, (page, name)
            assert text.index(f"<!-- {name}:begin -->") < text.index(f"<!-- {name}:end -->"), (page, name)
            assert name not in homes, f"block {name} in {homes.get(name)} and {page}"
            homes[name] = page
    assert {"headline", "cores", "scores"} <= set(homes)


def test_every_relative_link_of_the_pages_exists():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)\)", open(page).read()):
            if "://" not in target:
                path = os.path.normpath(os.path.join(os.path.dirname(page), target))
                assert os.path.exists(path), f"{page} links to {target}, which does not exist"


def test_links_written_into_a_page_are_relative_to_that_page(tmp_path):
    assert readme_blocks.link(os.path.join(ROOT, "docs", "results.md"),
                              "benchmarks/results/scores.png") == "../benchmarks/results/scores.png"
    assert readme_blocks.link(os.path.join(ROOT, "README.md"),
                              "benchmarks/results/scores.png") == "benchmarks/results/scores.png"


def test_tables_renders_a_results_file_into_the_block_named_after_it(tmp_path):
    cores = {"settings": {"d_model": 8, "n_layers": 2, "window": 20, "decode_batch": 16, "context": 5,
                          "train_batch": 4, "threads": 1, "torch": "x", "cpu": "y"},
             "cores": {"s5": {"params": 1234, "train_tokens_per_s": 5678, "decode_ms_per_token_cached": 2.0,
                              "decode_ms_per_token_naive": 50.0, "speedup_cached_vs_naive": 25.0}}}
    results = tmp_path / "cores.json"
    results.write_text(json.dumps(cores))
    page = tmp_path / "page.md"
    page.write_text("a\n<!-- cores:begin -->\nold\n<!-- cores:end -->\nb\n")
    texts = tables.main([str(results), "--readme", str(page)])
    assert "| s5 | 1k | 5,678 | 2.0 | 50 | 25x |" in texts["cores"]
    assert page.read_text() == f"a\n<!-- cores:begin -->\n{texts['cores']}\n<!-- cores:end -->\nb\n"
    with pytest.raises(SystemExit, match="no table"):
        tables.main([str(tmp_path / "unknown.json")])


@pytest.mark.parametrize("name", ["cores", "quantization", "quantization_trained", "quantization_vnni",
                                  "quant_backends", "train_throughput_cuda", "train_throughput_cpu",
                                  "cpu_size_sweep_s5", "int8_routes_cpu", "int8_routes_tt"])
def test_tables_renders_every_committed_results_file_it_knows(name):
    text = tables.main([os.path.join(ROOT, "benchmarks", "results", f"{name}.json")])[name]
    assert text.count("\n| ") >= 2  # a title row, a rule and at least one row
