import vlmoe


def test_dir_lists_the_lazy_exports():
    names = dir(vlmoe)
    for name in ("create_model", "load_model", "list_presets", "count_parameters"):
        assert name in names
    assert "__version__" in names
