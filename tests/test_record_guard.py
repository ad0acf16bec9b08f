"""A record is never replaced by a run of something else under the same method name: when a preset's defaults
change (the learned sampler's update, 2026-12-07), the records made with the old meaning stay."""
import json

import pytest

from timestep_sampling import UserError
from timestep_sampling.bench.records import check_not_replacing

OLD = "AdaptiveSampler(T=1000, reward='credit', conditioned=False, lr=0.03, K=20, credit_strata=64) + none"
NEW = "AdaptiveSampler(T=1000, reward='credit', conditioned=False, lr=0.06, K=40, credit_strata=64) + none"


def write(folder, fingerprint):
    cell = {"method": "adaptive", "schedule": "linear", "seed": 0}
    record = {**cell, "evals": [{**cell, "step": 0, "bpd_method": "estimate", "test_bpd": 5.9}]}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    (folder / "adaptive__linear__s0.json").write_text(json.dumps(record))


def test_a_record_of_another_fingerprint_is_not_replaced(tmp_path):
    write(tmp_path, OLD)
    with pytest.raises(UserError, match="holds the record of .*K=20.* now trains .*K=40"):
        check_not_replacing(tmp_path, "adaptive__linear__s0", NEW)
    check_not_replacing(tmp_path, "adaptive__linear__s0", OLD)  # the same meaning: rewriting is fine


@pytest.mark.parametrize("old", [None, "absent"])
def test_records_without_a_fingerprint_or_absent_ones_can_be_written(tmp_path, old):
    if old is None:
        write(tmp_path, None)
    check_not_replacing(tmp_path, "adaptive__linear__s0", NEW)
