from ultrafeedback.keys import content_key, instruction_id, normalise_text, request_id, seeded_int


def test_normalise_text_trims_and_unifies_newlines():
    assert normalise_text("  Hello\r\nworld  \r\n\n") == "Hello\nworld"
    assert normalise_text("Cafe\u0301") == "Café"


def test_keys_change_with_every_part():
    base = ["i", "m", "served", "helpfulness", "sys", '{"t": 1}', "chat@1"]
    key = request_id(*base)
    assert key == request_id(*base)
    for index in range(len(base)):
        changed = list(base)
        changed[index] = changed[index] + "x"
        assert request_id(*changed) != key


def test_instruction_id_depends_on_source():
    assert instruction_id("a", "text") != instruction_id("b", "text")
    assert len(content_key("k", 1)) == 24


def test_seeded_int_is_stable():
    assert seeded_int(1, "a") == seeded_int(1, "a") != seeded_int(2, "a")
