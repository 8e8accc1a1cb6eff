"""The instance catalog: the CSV as a frame (cached per file version) and the local machine as
one more row."""

import math
import os

import pytest
from lmiflow.sizing.catalog import (
    COLUMNS,
    CatalogError,
    catalog_with,
    load_catalog,
    local_instance_row,
)

HEADER = ("instance_type,family,accelerator,accelerator_count,memory_per_accelerator_bytes,"
          "memory_source,vcpu,host_memory_gib,usd_per_hour,price_region,price_source,"
          "price_date,planned,not_planned_reason\n")


def test_local_machine_row_is_unpriced_planned_and_says_where_it_comes_from():
    row = local_instance_row("NVIDIA L4", 2, 24 * 2**30, vcpu=8, host_memory_gib=31.5)
    assert math.isnan(row.pop("usd_per_hour"))  # no price: no $0.00 on any chart
    assert row == {
        "instance_type": "local", "family": "local", "accelerator": "NVIDIA L4",
        "accelerator_count": 2, "memory_per_accelerator_bytes": 24 * 2**30,
        "memory_source": "this machine", "vcpu": 8, "host_memory_gib": 31.5,
        "price_region": "", "price_source": "this machine is not billed by the hour",
        "price_date": "", "planned": True, "not_planned_reason": ""}
    row = local_instance_row("CPU (system RAM)", 1, 8 * 2**30)
    assert (row["vcpu"], row["host_memory_gib"]) == (None, None)


def test_catalog_with_keeps_the_catalog_columns_in_order():
    df = catalog_with([{"instance_type": "local", "planned": True}])
    assert list(df.columns) == list(COLUMNS)
    assert df.loc[0, "instance_type"] == "local"
    assert list(catalog_with([]).columns) == list(COLUMNS)


def test_load_catalog_reads_a_csv_and_normalises_it(tmp_path):
    p = tmp_path / "instances.csv"
    p.write_text(HEADER
                 + "ml.a.large,a,NVIDIA L4,1,100,,4,16,1.5,us-east-1,list,2026,TRUE,\n"
                 + "ml.b.large,b,NVIDIA L4,1,100,,4,16,n/a,,,,false,Neuron\n")
    df = load_catalog(p)
    assert df["planned"].tolist() == [True, False]
    assert df.loc[0, "usd_per_hour"] == 1.5 and df["usd_per_hour"].isna().tolist() == [
        False, True]
    assert df.loc[1, "price_source"] == "" and df.loc[1, "memory_source"] == ""
    assert df.loc[1, "not_planned_reason"] == "Neuron"
    assert load_catalog(str(p)) is df  # cached while the file is unchanged


def test_load_catalog_rereads_a_changed_file(tmp_path):
    p = tmp_path / "instances.csv"
    p.write_text(HEADER + "ml.a.large,a,NVIDIA L4,1,100,,4,16,1.5,,,,true,\n")
    assert load_catalog(p).loc[0, "usd_per_hour"] == 1.5
    p.write_text(HEADER + "ml.a.large,a,NVIDIA L4,1,100,,4,16,2.5,,,,true,\n")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_catalog(p).loc[0, "usd_per_hour"] == 2.5


def test_load_catalog_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(CatalogError, match=f"^instance catalog {missing} not found$"):
        load_catalog(missing)
    bad = tmp_path / "bad.csv"
    bad.write_text("instance_type,family\nml.a.large,a\n")
    with pytest.raises(CatalogError, match=f"^{bad}: missing columns accelerator, "):
        load_catalog(bad)


def test_default_catalog_is_the_bundled_one():
    df = load_catalog()
    g5 = df[df["instance_type"] == "ml.g5.12xlarge"].iloc[0]
    # 4 x A10G, 23,028 MiB each as the driver reports, $7.09/h in us-east-1
    assert (g5["accelerator"], g5["accelerator_count"], g5["usd_per_hour"]) == (
        "NVIDIA A10G", 4, 7.09)
    assert g5["memory_per_accelerator_bytes"] == 23028 * 2**20
    assert load_catalog(None) is df
