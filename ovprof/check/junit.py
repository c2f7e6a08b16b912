"""The check as JUnit XML, so CI shows one test per point and its failures.

    ovprof check --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl --junit check.xml

One <testcase> per point (baseline points, then points the baseline lacks).
Regressions, status changes and missing points are <failure>s; a missing point
under --allow-missing is <skipped>; improved and new points pass, with the
finding in <system-out>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ovprof.check.compare import OK, CheckResult, row_line


def junit_tree(result: CheckResult, suite: str) -> ET.ElementTree:
    failures = sum(p.failed for p in result.points)
    skipped = sum(p.excused and not p.failed for p in result.points)
    root = ET.Element("testsuites", name="ovprof check", tests=str(len(result.points)), failures=str(failures),
                      errors="0", skipped=str(skipped))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(result.points)), failures=str(failures),
                       errors="0", skipped=str(skipped))
    for p in result.points:
        tc = ET.SubElement(ts, "testcase", classname=f"ovprof.check.{suite}", name=f"{p.label} ({p.run_id_text})")
        # This point's findings, in the same words as the plain lines on stdout.
        lines = [row_line(p, r) for r in p.rows if r.verdict != OK]
        if p.failed:
            first = next(row_line(p, r) for r in p.rows if r.failed)
            ET.SubElement(tc, "failure", message=first, type=p.verdict).text = "\n".join(lines)
        elif p.excused:
            ET.SubElement(tc, "skipped", message=lines[0] if lines else "missing")
        if lines and not p.failed:
            ET.SubElement(tc, "system-out").text = "\n".join(lines)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(result: CheckResult, path: str | Path, suite: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit_tree(result, suite).write(path, encoding="utf-8", xml_declaration=True)
