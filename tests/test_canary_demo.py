"""End to end on the real local stack (issue 7 acceptance): worker with intent v1, v2 and a label-permuted v3,
milvus-lite FAQ store, gateway with the routing file, a real Prometheus scraping it, continuous client traffic,
and `python -m services.canary run` twice: v2 promoted (shadow, then 10% of sessions), v3 caught by the shadow
agreement gate and rolled back before any client saw it, no client request failed.

v2 here is v1's weights re-packaged (no training, to stay within ~3 minutes); `make canary-demo` retrains it.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


def test_canary_demo_promotes_v2_and_rolls_back_the_permuted_v3(tmp_path, capsys):
    if shutil.which("prometheus") is None:
        pytest.skip("the Prometheus server is not installed (apt-get install prometheus)")
    from services.canary.demo import main

    rc = main(["--out", str(tmp_path), "--no-train", "--bake", "20", "--clients", "3"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0, out[-6000:]
    assert all(summary["checks"].values()), summary
    assert summary["traffic"]["failed"] == 0 and summary["traffic"]["total"] > 500
    v2 = json.loads((tmp_path / "v2.json").read_text())
    v3 = json.loads((tmp_path / "v3.json").read_text())
    assert v2["result"] == "promoted" and [a["verdict"] for a in v2["analyses"]] == ["pass", "pass"]
    assert v3["result"] == "rolled_back" and len(v3["analyses"]) == 1
    gates = {g["name"]: g for g in v3["analyses"][0]["gates"]}
    assert (
        gates["shadow_agreement"]["status"] == "fail"
        and gates["shadow_agreement"]["observed"]["agreement"] < 0.5
    )
    assert "3" not in summary["traffic"]["versions"]  # v3 answered no client
    routing = (tmp_path / "routing.yaml").read_text()
    assert "stable: '2'" in routing and "canary" not in routing
