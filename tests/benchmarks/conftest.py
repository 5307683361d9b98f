def pytest_configure(config):
    # Deselect with `-m "not slow"`; they still run by default (and in CI).
    config.addinivalue_line("markers", "slow: loads a pretrained model or runs for 30 s+")
