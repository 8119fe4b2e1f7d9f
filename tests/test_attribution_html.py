"""The HTML report: ``attribute --html`` and the AttributionCallback's pages, read back with
Python's html.parser and rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from lit_attn.attribution.html_report import shade_levels, shade_rgb
from lit_attn.tasks import LongContextTask
from lit_attn.callbacks import AttributionCallback
from lit_attn.cli import main
from tests.test_attribution_callback import ForeignLM, events

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'
"""A context text that must show as text, never as markup."""


class PageDom(HTMLParser):
    """What a test needs of a page: its shaded spans (attributes, and the text directly inside
    them, without the index, kind and rank labels), the tags used and every URL it refers to."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self._depth: int | None = None  # nesting below the current shaded span
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {name: value or "" for name, value in attrs}
        self.urls += [values[name] for name in ("href", "src") if name in values]
        if self._depth is not None:
            self._depth += 1
        elif tag == "span" and "ctx" in values.get("class", "").split():
            self.spans.append(values)
            self._depth, self._text = 0, []

    def handle_endtag(self, tag: str) -> None:
        if self._depth == 0:
            self.spans[-1]["text"] = "".join(self._text)
            self._depth = None
        elif self._depth is not None:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth == 0:
            self._text.append(data)


def parse(page: str) -> PageDom:
    dom = PageDom()
    dom.feed(page)
    dom.close()
    return dom


def probes() -> list[dict]:
    """Two long-context probes of the built-in task (kinds, ground truth, an injected text) and
    one with a hostile text and a teacher-forced answer."""
    rows = []
    for ex in LongContextTask(num_texts=20, num_ops=2, num_distractors=5).examples(2, seed=3):
        rows.append({
            "contexts": ex["contexts"], "question": ex["question"], "relevant": ex["relevant"],
            "kinds": ex["kinds"], "injected_answer": ex["injected_answer"], "reference": ex["final"],
        })
    rows.append({"contexts": ["a=1", HOSTILE, "b=2"], "question": "a", "answer": "a=1\n\nanswer 1", "relevant": [0]})
    return rows


@pytest.fixture(scope="module")
def cli_page(tmp_path_factory) -> tuple[Path, list[dict], list[dict]]:
    """``attribute --html`` on the shipped model: the page, the input rows and the JSONL results."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("html")
    rows = probes()
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mask = os.umask(0o027)
    try:
        code = main([
            "attribute", "--input", str(source), "--output", str(folder / "out.jsonl"),
            "--html", str(folder / "report.html"), "--num-subsamples", "4", "--max-new-tokens", "40",
        ])
    finally:
        os.umask(mask)
    assert code == 0
    results = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    return folder / "report.html", rows, results


def check_spans(dom: PageDom, rows: list[dict], results: list[dict]) -> None:
    """One shaded span per context text, example after example in input order, each with its
    text, its score and the shade its score gives (scaled within its attribution)."""
    assert len(dom.spans) == sum(len(r["contexts"]) for r in rows)
    spans = iter(dom.spans)
    for row, result in zip(rows, results):
        levels = shade_levels(result["scores"])
        rank = {i: n for n, i in enumerate(result["ranking"], start=1)}
        k = len(row["relevant"])
        for i, (text, score, level) in enumerate(zip(row["contexts"], result["scores"], levels)):
            span = next(spans)
            assert span["data-index"] == str(i) and span["text"] == text, (span, text)
            assert float(span["data-score"]) == pytest.approx(score, rel=1e-12)
            assert float(span["data-shade"]) == pytest.approx(level, abs=1e-4)
            assert span["style"] == "background-color: rgb({}, {}, {})".format(*shade_rgb(level)), span
            assert ("top" in span["class"].split()) == (rank[i] <= k)
            assert span["data-relevant"] == ("1" if i in row["relevant"] else "0")
            assert span.get("data-kind") == (row["kinds"][i] if "kinds" in row else None)
    # the highest score gets the full shade, the lowest white
    first = dom.spans[: len(rows[0]["contexts"])]
    assert {s["data-shade"] for s in first} >= {"0.0000", "1.0000"}


def test_cli_page_dom_has_one_shaded_span_per_text_in_input_order(cli_page) -> None:
    """Plain-Python check of the page ``attribute --html`` writes (runs without a browser)."""
    path, rows, results = cli_page
    page = path.read_text(encoding="utf-8")
    dom = parse(page)
    check_spans(dom, rows, results)
    # self-contained: no script, no stylesheet link, no image, no URL but in-page anchors
    assert not {"script", "link", "img", "iframe"} & set(dom.tags)
    assert dom.urls and all(url.startswith("#") for url in dom.urls), dom.urls
    assert "default-src 'none'" in page and "@import" not in page and "url(" not in page
    # escaped: the hostile text is shown as text (the parser found it as data, above)
    assert HOSTILE not in page and "&lt;script&gt;" in page
    # question, answers, ground truth, kinds, injection verdict, method and settings are on it
    for row, result in zip(rows, results):
        assert f"<pre>{escape(row['question'])}</pre>" in page and f"<pre>{escape(result['answer'])}</pre>" in page
    assert page.count('class="truth"') == sum(len(r["relevant"]) for r in rows) + 3  # + one legend mark per example
    assert page.count("the injected text asks for") == 2 and "attntrace" in page and "num_subsamples" in page
    assert "Credit by kind" in page and "attribution/share/needed" in page
    # written whole, with the mode a new file gets under the umask (0o027 here)
    assert (path.stat().st_mode & 0o777) == 0o640 and not list(path.parent.glob(".*.tmp"))


def test_cli_html_to_a_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"contexts": ["a=1"], "question": "a"}) + "\n")
    code = main(["attribute", "--input", str(source), "--html", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --html '{tmp_path}' is a folder;"), err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)


def png_size_and_colours(path: Path) -> tuple[tuple[int, int], dict[tuple[int, int, int], int]]:
    """Width, height and the pixel count of every RGB colour of a PNG."""
    from PIL import Image  # matplotlib's dependency

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return rgb.size, {colour: count for count, colour in rgb.getcolors(maxcolors=1 << 24)}


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_cli_page_in_headless_chromium(cli_page, tmp_path: Path) -> None:
    """The browser's own DOM of the page, and a screenshot showing the shades."""
    path, rows, results = cli_page
    url = path.as_uri()
    dumped = browser("--dump-dom", url, profile=tmp_path / "profile").stdout
    dom = parse(dumped)
    check_spans(dom, rows, results)
    assert "script" not in dom.tags
    shot = tmp_path / "report.png"
    browser(f"--screenshot={shot}", "--window-size=1280,1400", url, profile=tmp_path / "profile")
    (width, height), colours = png_size_and_colours(shot)
    assert (width, height) == (1280, 1400)
    # every text of the first example (all on screen) is painted in its own shade: a text box
    # is hundreds of pixels of one colour, where the legend's gradient has a column of each
    for level in shade_levels(results[0]["scores"]):
        assert colours.get(shade_rgb(level), 0) >= 150, (level, shade_rgb(level), colours.get(shade_rgb(level)))


def test_callback_writes_a_page_per_logging_point_and_an_index(tmp_path: Path) -> None:
    seed_everything(0)
    torch.set_num_threads(1)
    examples = [
        {"contexts": ["k=7", "a=3", HOSTILE], "question": "a", "answer": "a=3", "relevant": [1],
         "kinds": ["distractor", "needed", "filler"]},
        {"contexts": ["x=1", "y=4"], "question": "y"},
    ]
    callback = AttributionCallback(
        examples, every_n_train_steps=2, model_attr="lm", tokenizer_attr="tok", num_subsamples=3, max_new_tokens=4, k=1,
    )
    trainer = Trainer(
        max_steps=4, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(ForeignLM())
    folder = tmp_path / "run" / "version_0" / "attribution"
    assert sorted(p.name for p in folder.iterdir()) == [
        "index.html", "step_000002.html", "step_000002.json", "step_000004.html", "step_000004.json",
    ]
    last = (folder / "step_000004.html").read_text(encoding="utf-8")
    dom = parse(last)
    assert [s["text"] for s in dom.spans] == examples[0]["contexts"] + examples[1]["contexts"]
    for span, score in zip(dom.spans, [s for r in callback.last_results for s in r.scores]):
        assert float(span["data-score"]) == pytest.approx(score, rel=1e-12)
    assert [s.get("data-kind") for s in dom.spans] == ["distractor", "needed", "filler", None, None]
    assert "Attribution at step 4" in last and dom.urls == ["index.html", "#example-0", "#example-1"]
    # the index lists both points, each with its scalars as logged
    index = (folder / "index.html").read_text(encoding="utf-8")
    assert parse(index).urls == ["step_000002.html", "step_000004.html"]
    share = callback.last_metrics["attribution/relevant_share"]
    assert f"{share:.4g}" in index and "<th>share/<wbr>needed</th>" in index
    assert json.loads((folder / "step_000004.json").read_text())["scalars"] == callback.last_metrics
    # TensorBoard keeps its heatmap
    assert [e.step for e in events(tmp_path).Images("attribution/heatmap")] == [2, 4]
