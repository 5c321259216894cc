from relaymail.resolver import governing_key

ENTRIES = {"example.com": 1, ".example.com": 2, ".eu.corp.example": 3, "*": 4}


def test_the_exact_domain_speaks_first_then_the_nearest_parent_entry():
    assert governing_key(ENTRIES, "example.com") == "example.com"
    assert governing_key(ENTRIES, "mx.example.com") == ".example.com"
    assert governing_key(ENTRIES, "a.b.example.com") == ".example.com"
    assert governing_key(ENTRIES, "mx.eu.corp.example") == ".eu.corp.example"


def test_no_entry_is_none_and_the_wildcard_is_the_callers_to_read():
    assert governing_key(ENTRIES, "corp.example") is None
    assert governing_key(ENTRIES, "other.test") is None
    assert governing_key({}, "example.com") is None
