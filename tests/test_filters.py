"""The filter model and every built-in filter, on real English (KJV), Japanese and adversarial text."""

import base64
import json
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from kogitune.corpora import write_kjv_chapters
from kogitune.filters import REGISTRY, FilterError, FilterResult, Pipeline, build_filter, parse_filter_spec, report
from kogitune.filters.language import detect_language
from kogitune.filters.pii import luhn_valid
from kogitune.filters.repetition import WordArrays, ngram_repeats
from kogitune.filters.samples import CHINESE, ENGLISH, JAPANESE, KOREAN, SHORT, labelled_paragraphs
from kogitune.filters.text import class_fraction, words

BUILTIN = {
    "nfkc",
    "whitespace",
    "length",
    "token_length",
    "char_fraction",
    "compression",
    "gopher_repetition",
    "gopher_quality",
    "stop_words",
    "c4_lines",
    "language",
    "pii",
    "wikipedia_trim",
}


@pytest.fixture(scope="module")
def kjv(tmp_path_factory):
    path = write_kjv_chapters(tmp_path_factory.mktemp("kjv") / "kjv.jsonl", limit=120)
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def _huge_line(kjv):
    return " ".join(kjv)[:300_000].replace("\n", " ")


ADVERSARIAL = {
    "empty": "",
    "whitespace_only": " \t\n\u3000\r\n  \n",
    "mixed_scripts": "Kogitune は東京で開発された。한국어도 조금. Русский текст. 中文也有。",
    "emoji": "👨‍👩‍👧 family 🦊🦊🦊 きつね 🎉" * 20,
    "control_chars": "a\x00b\x07c\x1bd\x7fe\u200bf\ufeffg\u202eh",
    "lone_surrogates": "before \ud800 middle \udfff after",
    "only_punctuation": "!!!???...。。。、、、---***" * 30,
    "digits": "0123456789 " * 200,
}


# --- the model ----------------------------------------------------------------------------------------------------


def test_every_builtin_filter_is_registered():
    assert BUILTIN <= set(REGISTRY)


def test_unknown_filter_lists_the_known_ones():
    with pytest.raises(FilterError, match="unknown filter 'lenght'.*length.*nfkc"):
        build_filter("lenght")


def test_unknown_parameter_lists_the_valid_ones_with_defaults():
    with pytest.raises(FilterError, match=r"no parameter 'min_char'.*min_chars \(default 200\)"):
        build_filter("length", min_char=10)


def test_parameter_types_are_checked_and_whole_floats_become_ints():
    with pytest.raises(FilterError, match="'min_chars' must be like its default 200, got 'ten'"):
        build_filter("length", min_chars="ten")
    with pytest.raises(FilterError, match="collapse_spaces"):
        build_filter("whitespace", collapse_spaces=1)
    assert build_filter("length", min_chars=10.0).min_chars == 10
    with pytest.raises(FilterError, match="above the maximum"):
        build_filter("length", min_chars=10, max_chars=5)


def test_pipeline_stops_at_the_first_drop_and_prefixes_the_reason():
    pipeline = Pipeline.from_config(
        {
            "filters": [
                {"name": "whitespace"},
                {"name": "length", "min_chars": 10},
                {"name": "language", "languages": ["ja"]},
            ]
        }
    )
    result, steps = pipeline.trace("  short  ")
    assert result == FilterResult(None, 5.0, "length:too_few_chars")
    assert [s.text for s in steps] == ["short", None]
    assert pipeline.apply("Kogitune cleans text before tokenizing it.").reason == "language:lang_en"
    assert pipeline.apply(JAPANESE[0]).text == JAPANESE[0]


def test_config_round_trips_through_json_and_files(tmp_path):
    config = {
        "filters": [
            {"name": "nfkc"},
            {"name": "length", "min_chars": 50, "max_bytes": 10_000},
            {"name": "pii", "replace": ["email"], "placeholders": {"email": "[mail]"}},
            {"name": "gopher_repetition", "top_ngram_fracs": [[2, 0.25]]},
        ]
    }
    pipeline = Pipeline.from_config(config)
    saved = pipeline.to_config()
    assert json.loads(json.dumps(saved)) == saved
    assert saved["filters"][1] == {
        "name": "length",
        "min_chars": 50,
        "max_chars": None,
        "min_bytes": None,
        "max_bytes": 10_000,
        "min_words": None,
        "max_words": None,
    }
    assert saved["filters"][3]["top_ngram_fracs"] == [[2, 0.25]]
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(config))
    assert Pipeline.from_config(path).to_config() == saved
    assert Pipeline.from_config(saved).to_config() == saved
    in_manifest = pipeline.to_provenance()
    assert in_manifest["filters"][3]["top_ngram_fracs"] == [[2, "0.25"]]
    assert in_manifest["filters"][3]["duplicate_line_frac"] == "0.3"
    assert Pipeline.from_config(in_manifest).to_config() == saved
    assert pipeline.filters[2].apply("mail me: someone@example.com").text == "mail me: [mail]"


def test_every_filter_round_trips_through_the_manifest_form():
    """Manifests allow no floats, so store records them as strings; they must read back as the same config."""
    pipeline = Pipeline([build_filter(name) for name in sorted(REGISTRY)])
    in_manifest = json.loads(json.dumps(pipeline.to_provenance()))
    assert not any(isinstance(value, float) for value in _leaves(in_manifest))
    assert Pipeline.from_config(in_manifest).to_config() == pipeline.to_config()


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_yaml_config_when_pyyaml_is_installed_and_a_clear_error_when_not(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    path = tmp_path / "filters.yaml"
    path.write_text("filters:\n  - name: nfkc\n  - name: length\n    min_chars: 20\n")
    assert Pipeline.from_config(path).filters[1].min_chars == 20
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(FilterError, match="PyYAML is not installed"):
        Pipeline.from_config(path)


@pytest.mark.parametrize(
    "config, message",
    [
        ([], "must be an object with a list"),
        ({"filter": []}, "must be an object with a list"),
        ({"filters": ["nfkc"]}, "filter 1 of the config is 'nfkc'"),
        ({"filters": [{"min_chars": 3}]}, 'must be an object with a "name"'),
    ],
)
def test_malformed_configs_say_what_is_wrong(config, message):
    with pytest.raises(FilterError, match=message):
        Pipeline.from_config(config)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(FilterError, match="cannot read the filter config"):
        Pipeline.from_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{filters: [")
    with pytest.raises(FilterError, match="not valid JSON"):
        Pipeline.from_config(bad)


def test_the_example_configs_in_the_docs_build():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "filters.md").read_text(encoding="utf-8")
    configs = re.findall(r"```json\n(.*?)```", docs, re.DOTALL)
    assert len(configs) >= 3
    for config in configs:
        assert len(Pipeline.from_config(json.loads(config))) >= 1


def test_command_line_filter_specs():
    assert parse_filter_spec("nfkc") == {"name": "nfkc"}
    assert parse_filter_spec("length:min_chars=200,max_chars=null") == {
        "name": "length",
        "min_chars": 200,
        "max_chars": None,
    }
    spec = parse_filter_spec('language:languages=["ja","en"],min_confidence=0.6')
    assert spec == {"name": "language", "languages": ["ja", "en"], "min_confidence": 0.6}
    assert build_filter(**parse_filter_spec("language:languages=ja")).languages == ("ja",)
    assert parse_filter_spec('pii:placeholders={"email":"[a,b]"}')["placeholders"] == {"email": "[a,b]"}
    for bad in (":min_chars=3", "length:min_chars", "length:=3"):
        with pytest.raises(FilterError, match="filter spec"):
            parse_filter_spec(bad)


def test_percentiles_come_from_a_bounded_seeded_sample(monkeypatch):
    monkeypatch.setattr(report, "MAX_SCORES", 1000)
    total, sampler = report.FilterStats("length"), random.Random(0)
    for batch in range(10):
        total.merge(report.FilterStats("length", scores=[float(batch * 1000 + i) for i in range(1000)]), sampler, 3)
    summary = total.to_dict()["scores"]
    assert summary["count"] == 10_000 and summary["sampled"] and len(total.scores) == 1000
    assert 3500 < summary["p50"] < 6500 and summary["p0"] < 500 and summary["p100"] > 9500


def test_stateless_prefix_split():
    pipeline = Pipeline.from_config({"filters": [{"name": "nfkc"}, {"name": "exact_dedup"}, {"name": "length"}]})
    head, tail = pipeline.split_stateless_prefix()
    assert [f.name for f in head.filters] == ["nfkc"]
    assert [f.name for f in tail.filters] == ["exact_dedup", "length"]
    assert pipeline.stateful and not head.stateful


@pytest.mark.parametrize("name", sorted(BUILTIN))
@pytest.mark.parametrize("case", sorted(ADVERSARIAL) + ["huge_line"])
def test_every_filter_survives_adversarial_input(name, case, kjv):
    text = _huge_line(kjv) if case == "huge_line" else ADVERSARIAL[case]
    result = build_filter(name).apply(text)
    assert isinstance(result, FilterResult)
    assert result.text is None or isinstance(result.text, str)
    assert result.score is None or math.isfinite(result.score)
    assert (result.text is None) == bool(result.reason)


# --- normalization ------------------------------------------------------------------------------------------------


def test_nfkc_folds_full_and_half_width_forms():
    nfkc = build_filter("nfkc")
    assert nfkc.apply("ＡＢＣ１２３ ｶﾀｶﾅ ㈱").text == "ABC123 カタカナ (株)"
    assert nfkc.apply(JAPANESE[1]).text == JAPANESE[1]
    with pytest.raises(FilterError, match="form must be one of"):
        build_filter("nfkc", form="nfkc")


def test_whitespace_cleanup():
    clean = build_filter("whitespace")
    assert clean.apply("a\r\nb\rc\u2028d").text == "a\nb\nc\nd"
    assert clean.apply(ADVERSARIAL["control_chars"]).text == "abcdefgh"
    assert clean.apply(ADVERSARIAL["lone_surrogates"]).text == "before middle after"
    assert (
        clean.apply("全角\u3000スペース  と\t\tタブ  \n\n\n\n次の段落   ").text == "全角 スペース と タブ\n\n次の段落"
    )
    assert clean.apply("👨‍👩‍👧 ok").text == "👨‍👩‍👧 ok", "the zero-width joiner inside emoji stays"
    assert clean.apply(ADVERSARIAL["whitespace_only"]) == FilterResult(None, 1.0, "empty")
    assert build_filter("whitespace", max_blank_lines=0).apply("a\n\n\nb").text == "a\nb"
    assert build_filter("whitespace", strip_line_starts=True).apply("a\n   b").text == "a\nb"


# --- length -------------------------------------------------------------------------------------------------------


def test_length_bounds_in_chars_bytes_and_words(kjv):
    assert build_filter("length").apply(kjv[0]).text == kjv[0]
    assert build_filter("length").apply("In the beginning.").reason == "too_few_chars"
    japanese = JAPANESE[0]
    by_bytes = build_filter("length", min_chars=None, max_bytes=len(japanese) * 2)
    assert by_bytes.apply(japanese).reason == "too_many_bytes", "Japanese is 3 bytes per character in UTF-8"
    assert build_filter("length", min_chars=None, min_words=50).apply(JAPANESE[6]).text is not None
    assert build_filter("length", min_chars=None, max_words=10).apply(kjv[1]).reason == "too_many_words"


def test_token_length_counts_tokens_of_the_named_tokenizer(kjv):
    tokens = build_filter("token_length", tokenizer="gpt2", min_tokens=10, max_tokens=100)
    assert tokens.apply("Hello world").reason == "too_few_tokens"
    assert tokens.apply(kjv[0]).reason == "too_many_tokens"
    result = tokens.apply("And God said, Let there be light: and there was light. " * 2)
    assert result.text is not None and 10 <= result.score <= 100
    surrogates = tokens.apply(ADVERSARIAL["lone_surrogates"])
    assert surrogates.reason == "too_few_tokens" and surrogates.score > 3


# --- character classes --------------------------------------------------------------------------------------------


def test_character_class_fractions_of_real_text(kjv):
    assert class_fraction("japanese", JAPANESE[0]) > 0.85
    assert class_fraction("hiragana", JAPANESE[0]) > 0.4
    assert class_fraction("katakana", JAPANESE[3]) > 0.1
    assert class_fraction("kanji", CHINESE[0]) > 0.85
    assert class_fraction("hangul", KOREAN[0]) > 0.85
    assert class_fraction("latin", kjv[0]) > 0.95
    assert class_fraction("digit", ADVERSARIAL["digits"]) == 1.0
    assert class_fraction("symbol", ADVERSARIAL["only_punctuation"]) == 1.0
    assert class_fraction("letter", "") == 0.0


def test_char_fraction_filter():
    japanese_only = build_filter("char_fraction", char_class="japanese", min_fraction=0.5)
    assert japanese_only.apply(JAPANESE[2]).text == JAPANESE[2]
    assert japanese_only.apply(ENGLISH[0]).reason == "too_few_japanese"
    few_digits = build_filter("char_fraction", char_class="digit", min_fraction=0.0, max_fraction=0.2)
    assert few_digits.apply("| 2019 | 1,234 | 5,678 |\n| 2020 | 2,345 | 6,789 |").reason == "too_many_digit"
    with pytest.raises(FilterError, match="char_class must be one of"):
        build_filter("char_fraction", char_class="emoji")


# --- repetition ---------------------------------------------------------------------------------------------------


def test_compression_ratio(kjv):
    compression = build_filter("compression")
    assert 0.3 < compression.apply(kjv[1]).score < 0.5
    spam = "Click here to subscribe to our newsletter!\n" * 40
    assert compression.apply(spam).reason == "too_compressible"
    assert compression.apply("short text").score is None
    blob = base64.b64encode(random.Random(0).randbytes(3000)).decode()
    assert compression.apply(blob).text == blob, "no upper bound by default: short Japanese compresses as badly"
    assert build_filter("compression", max_ratio=0.7).apply(blob).reason == "incompressible"


def _reference_repeats(word_list, n):
    """ngram_repeats written the slow, obvious way."""
    grams = [tuple(word_list[i : i + n]) for i in range(len(word_list) - n + 1)]
    counts = Counter(grams)
    top = max(counts.values(), default=0)
    top_chars = 0
    if top > 1:
        first = next(gram for gram in grams if counts[gram] == top)
        top_chars = sum(map(len, first)) * top
    covered = set()
    for i, gram in enumerate(grams):
        if gram in grams[:i]:
            covered.update(range(i, i + n))
    return top_chars, sum(len(word_list[i]) for i in covered)


def test_ngram_repeats_on_a_known_example_and_against_a_slow_reference(kjv):
    word_list = "a b c d e a b c d e x".split()
    repeats = {r.n: r for r in ngram_repeats(WordArrays(word_list), [2, 5, 6])}
    assert repeats[5] == (5, 10, 5) and repeats[6] == (6, 0, 0)
    assert repeats[2].top_chars == 4, "'a b' occurs twice: 2 characters x 2"
    assert list(ngram_repeats(WordArrays(["x", "y"]), [2, 3])) == [(2, 0, 0), (3, 0, 0)]
    texts = [kjv[i][:3000] for i in (0, 4, 30, 60)] + ["la la la land " * 7 + "and la la la again", "", "one"]
    for text in texts:
        word_list = words(text)
        for found in ngram_repeats(WordArrays(word_list), range(1, 11)):
            assert found[1:] == _reference_repeats(word_list, found.n), (text[:30], found.n)


def test_words_follow_scripts():
    assert words("Don't stop: 東京には住んでいます。カタカナ") == [
        "Don't",
        "stop",
        "東京",
        "には",
        "住",
        "んでいます",
        "カタカナ",
    ]


def test_gopher_repetition(kjv):
    repetition = build_filter("gopher_repetition")
    dropped = [text.split("\n")[0] for text in kjv if repetition.apply(text).text is None]
    assert 0.1 * len(kjv) < len(dropped) < 0.2 * len(kjv), "the Law's formulas repeat 5-grams, the stories do not"
    assert "Genesis 3" not in dropped and "Leviticus 3" in dropped
    assert repetition.apply("Home\nNews\nHome\nNews\nHome\nContact\n").reason == "duplicate_lines"
    repeated_paragraphs = "\n\n".join([JAPANESE[0], JAPANESE[1], JAPANESE[0], JAPANESE[0]])
    assert repetition.apply(repeated_paragraphs).reason == "duplicate_paragraphs"
    assert repetition.apply(JAPANESE[0] + JAPANESE[1]).text is not None
    assert repetition.apply("buy cheap watches " * 30).reason.startswith("top_")
    with pytest.raises(FilterError, match="top_ngram_fracs must be a list"):
        build_filter("gopher_repetition", top_ngram_fracs=[[2]])


# --- quality ------------------------------------------------------------------------------------------------------


def test_gopher_quality(kjv):
    quality = build_filter("gopher_quality")
    assert all(quality.apply(text).text is not None for text in kjv[:50] if len(words(text)) >= 50)
    assert quality.apply("Too short.").reason == "too_few_words"
    bullets = "\n".join(f"• item number {i} of a long list" for i in range(40))
    assert quality.apply(bullets).reason == "bullet_lines"
    teasers = "\n".join(f"Read the rest of story number {i} about the town council..." for i in range(30))
    assert quality.apply(teasers).reason == "ellipsis_lines"
    assert quality.apply("#tag #news #today " * 30).reason == "symbols"
    assert quality.apply(ADVERSARIAL["digits"]).reason == "non_alpha_words"
    assert quality.apply("a b c d e f g " * 20).reason == "short_words"
    japanese = build_filter("gopher_quality", min_mean_word_length=None, max_mean_word_length=None)
    assert quality.apply(JAPANESE[0]).reason == "short_words", "Gopher's English bounds do not fit Japanese"
    assert japanese.apply(JAPANESE[0]).text == JAPANESE[0]


def test_stop_words_in_english_and_japanese(kjv):
    english = build_filter("stop_words", language="en")
    japanese = build_filter("stop_words", language="ja")
    assert english.apply(kjv[0]).text is not None
    assert english.apply("Cheap Flights Hotels Car Rental Deals Tokyo Paris").reason == "few_en_stop_words"
    assert english.apply("THE THEME THEORY").score == 1.0, "whole words only, any case"
    assert all(japanese.apply(text).text is not None for text in JAPANESE)
    assert japanese.apply("東京都千代田区 大手町駅 徒歩五分 家賃十万円 駐車場").reason == "few_ja_stop_words"
    with pytest.raises(FilterError, match="language must be one of en, ja"):
        build_filter("stop_words", language="fr")


def test_c4_lines():
    c4 = build_filter("c4_lines")
    page = (
        "Home | About | Contact\nThe council met on Tuesday to discuss the new library.\n"
        "Please enable JavaScript to view this page.\nこの図書館は百年の歴史を持つ。\n"
        "Read our privacy policy before you continue.\nShare"
    )
    result = c4.apply(page)
    assert result.text == "The council met on Tuesday to discuss the new library.\nこの図書館は百年の歴史を持つ。"
    assert result.score == pytest.approx(4 / 6)
    assert c4.apply("Lorem ipsum dolor sit amet, consectetur adipiscing elit.").reason == "lorem_ipsum"
    assert c4.apply("Home\nAbout\nContact").reason == "no_lines_left"
    assert build_filter("c4_lines", drop_curly_brace=True).apply("function f() { return 1; }").reason == "curly_brace"


# --- language -----------------------------------------------------------------------------------------------------


def test_language_id_on_the_labelled_paragraphs_and_short_sentences():
    for language, text in labelled_paragraphs():
        assert detect_language(text).language == language, text[:40]
    right = sum(detect_language(text).language == language for language, text in SHORT)
    assert right >= len(SHORT) - 1


def test_language_id_on_kjv_chapters_and_odd_input(kjv):
    assert all(detect_language(text).language == "en" for text in kjv)
    assert detect_language("").language == "und"
    assert detect_language("🦊🎉 12345 !!!").language == "und"
    assert detect_language("Привет, как дела? Это русский текст.").language == "ru"
    assert detect_language(ADVERSARIAL["mixed_scripts"]).language == "ja"


def test_language_filter_reasons():
    japanese = build_filter("language", languages=["ja"], min_confidence=0.5)
    assert japanese.apply(JAPANESE[4]).text == JAPANESE[4]
    assert japanese.apply(CHINESE[0]).reason == "lang_zh"
    assert japanese.apply(KOREAN[0]).reason == "lang_ko"
    mixed = build_filter("language", languages=["ja", "en"]).apply(JAPANESE[0] + "\n" + ENGLISH[1])
    assert mixed.reason == "uncertain_ja" and 0.3 < mixed.score < 0.5
    with pytest.raises(FilterError, match="languages must be a non-empty list"):
        build_filter("language", languages=[])


# --- PII ----------------------------------------------------------------------------------------------------------


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("連絡先: taro.yamada@example.co.jp までどうぞ", "連絡先: <EMAIL> までどうぞ"),
        ("Write to first.last+tag@mail.example.org.", "Write to <EMAIL>."),
        ("連絡先taro@example.jpまで", "連絡先<EMAIL>まで"),
        ("電話は03-1234-5678、携帯は090-1234-5678です。", "電話は<PHONE>、携帯は<PHONE>です。"),
        ("代表 (06) 6123-4567 / 09012345678", "代表 <PHONE> / <PHONE>"),
        ("Call +81 3-1234-5678 or +1 (555) 123-4567 or (555) 987-6543.", "Call <PHONE> or <PHONE> or <PHONE>."),
        ("Pay with 4111 1111 1111 1111 or 3782-822463-10005.", "Pay with <CREDIT_CARD> or <CREDIT_CARD>."),
        (
            "Servers 192.168.0.1, 10.0.0.254. and 2001:db8::8a2e:370:7334 or fe80::1%eth0.",
            "Servers <IP>, <IP>. and <IP> or <IP>.",
        ),
    ],
)
def test_pii_is_replaced(text, expected):
    assert build_filter("pii").apply(text).text == expected


@pytest.mark.parametrize(
    "text",
    [
        "John 3:16 and Genesis 1:1-3 are verses.",
        "The meeting is at 12:30:45 on 2023-01-15.",
        "Card 4111 1111 1111 1112 fails Luhn.",
        "Version 256.1.1.1 is not an address.",
        "std::vector<int> v;",
        "ISBN 978-4-00-310101-8",
        "Population 127,000,000 in 2020.",
        "@mention and user@ and @example.com",
    ],
)
def test_pii_leaves_look_alikes_alone(text):
    assert build_filter("pii").apply(text) == FilterResult(text, 0.0)


def test_pii_urls_and_placeholders_are_configurable():
    pii = build_filter("pii", replace=["url", "email"], placeholders={"url": "[link]"})
    text = "See https://example.com/a?b=c, www.example.org/x. or https://ja.wikipedia.org/wiki/富士山、mail a@b.jp"
    assert pii.apply(text).text == "See [link], [link]. or [link]、mail <EMAIL>"
    assert build_filter("pii").apply("https://example.com").text == "https://example.com", "URLs are opt-in"
    with pytest.raises(FilterError, match="unknown PII kind"):
        build_filter("pii", replace=["address"])


# --- Wikipedia ----------------------------------------------------------------------------------------------------


def test_wikipedia_trim_japanese_and_english():
    trim = build_filter("wikipedia_trim")
    article = (
        "富士山\n\n富士山は日本最高峰の山である[1]。古くから信仰の対象とされた[要出典]。"
        "標高は三七七六メートル[注 2]。\n\n== 脚注 ==\n1. 国土地理院\n\n関連項目\n- 富士五湖"
    )
    assert trim.apply(article).text == (
        "富士山\n\n富士山は日本最高峰の山である。古くから信仰の対象とされた。標高は三七七六メートル。"
    )
    english = (
        "Mount Fuji\nMount Fuji is the highest mountain in Japan.[1][a][citation needed]\n\n"
        "See also\n\n* Fuji Five Lakes"
    )
    assert trim.apply(english).text == "Mount Fuji\nMount Fuji is the highest mountain in Japan."
    assert trim.apply("Notes\nNotes is a 1975 song.").text == "Notes\nNotes is a 1975 song.", "titles stay"
    assert trim.apply("Title\n参考文献\n本").text == "Title"
    assert build_filter("wikipedia_trim", sections=["Links"]).apply("A[1]\nLinks\nx").text == "A"
