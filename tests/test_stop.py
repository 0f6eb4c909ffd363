"""Stop strings over streamed text pieces."""
import pytest

from sonic.errors import SonicError
from sonic.stop import StopStrings


def run(stops, pieces):
    """Feed every piece; the emitted text, whether a stop was hit, and what flush() returned."""
    s = StopStrings(stops)
    out, hit = [], False
    for p in pieces:
        text, hit = s.feed(p)
        out.append(text)
        if hit:
            break
    return "".join(out), hit, s.flush()


def test_stop_inside_one_piece():
    assert run(["STOP"], ["Hello ", "world STOP and more", "never seen"]) == ("Hello world ", True, "")


def test_stop_straddling_two_pieces():
    assert run(["</answer>"], ["The answer is 42</ans", "wer> trailing"]) == ("The answer is 42", True, "")


def test_stop_straddling_three_pieces():
    s = StopStrings(["<|end|>"])
    assert s.feed("done<|") == ("done", False)
    assert s.feed("en") == ("", False)
    assert s.feed("d|>junk") == ("", True)
    assert s.feed("more") == ("", True)  # stays stopped
    assert s.flush() == ""


def test_stop_at_the_very_start():
    assert run(["###"], ["### heading"]) == ("", True, "")
    assert run(["###"], ["#", "##", "x"]) == ("", True, "")


def test_several_stop_strings_earliest_wins():
    assert run(["\n\n", "User:", "END"], ["reply text User: hi\n\nEND"]) == ("reply text ", True, "")
    assert run(["abc", "bcd"], ["xab", "cd"]) == ("x", True, "")
    assert run(["abcd", "bc"], ["xab", "cd"]) == ("x", True, "")   # "abcd" starts first
    assert run(["abcd", "bc"], ["xab", "ce"]) == ("xa", True, "")  # "abcd" missed, "bc" hit


def test_near_miss_is_released_later():
    s = StopStrings(["STOP"])
    assert s.feed("go ST") == ("go ", False)     # "ST" might start STOP: held
    assert s.feed("O") == ("", False)
    assert s.feed("RM warning") == ("STORM warning", False)
    assert s.feed(" S") == (" ", False)
    assert s.flush() == "S"                       # generation ended: release what was held
    assert s.flush() == ""


def test_repeated_prefix_characters():
    # The held suffix must be the longest one that could still become the stop string.
    assert run(["aab"], ["a", "a", "a", "b"]) == ("a", True, "")
    assert run(["aab"], ["aaa", "c"]) == ("aaac", False, "")


def test_no_stop_strings_emits_everything():
    s = StopStrings([])
    assert s.feed("anything") == ("anything", False)
    assert s.flush() == ""


def test_unicode_stop_strings():
    assert run(["。"], ["你好", "世界。再见"]) == ("你好世界", True, "")
    assert run(["🛑"], ["go go 🛑 stop"]) == ("go go ", True, "")


def test_empty_stop_string_is_an_error():
    with pytest.raises(SonicError, match="non-empty"):
        StopStrings(["ok", ""])
