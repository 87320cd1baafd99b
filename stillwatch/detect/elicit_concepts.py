"""Concept words for the elicitation model: synonyms (by stem, several languages) mapped to one concept each, so
a phrasing the model never saw still lights up the features of one it did ("disclose" reads like "reveal"), and
so does a language with fewer training prompts ("muéstrame" and "zeig" read like "show")."""

from __future__ import annotations

import re

# concept -> stems; a word belongs to a concept when it starts with one of its stems (longest stem wins)
CONCEPTS: dict[str, tuple[str, ...]] = {
    "REVEAL": ("cópi", "copi", "repit", "ripet", "répét", "répèt", "wiederhol", "повтор", "kopier", "schreib", "dimmi", "dime", "stamp", "imprim", "recopi", "riport", "reprodu", "escrev", "scriv", "mostra", "процитир", "enséñ", "ensen", "ausgeb", "show", "reveal", "print", "output", "dump", "display", "give", "share", "expos", "disclos", "leak",
               "paste", "emit", "spell", "writ", "transcrib", "echo", "recit", "reproduc", "copy", "list", "tell",
               "return", "provid", "includ", "surfac", "hand over", "report", "quot", "prefix", "append", "prepend",
               "montr", "affich", "révèl", "revel", "donne", "muestr", "mostr", "dame", "escrib", "zeig", "gib",
               "nenn", "покаж", "вывед", "выведи", "напиш", "输出", "打印", "展示", "显示", "告诉", "写出"),
    "HIDDEN": ("ocult", "nascost", "verborg", "integral", "brut", "crudo", "rohe", "целиком", "полност", "интерн", "segret", "secret", "hidden", "hide", "internal", "private", "secret", "raw", "full", "complet", "entire", "unfilter",
               "unredact", "verbatim", "inner", "conceal", "untouch", "unedit", "uncensor", "whole", "exact",
               "original", "behind", "normally", "usually", "trim", "keep to yourself", "cach", "intern", "oculta",
               "versteck", "vollständ", "скрыт", "внутрен", "隐藏", "内部", "完整"),
    "COT": ("razon", "pensier", "réflex", "reflexi", "überleg", "ueberleg", "denken", "reason", "thought", "think", "chain", "cot", "scratchpad", "monologue", "deliberat", "rational",
            "trace", "notes", "mind", "raisonn", "pensée", "razonam", "pensam", "raciocín", "ragionam", "gedank",
            "denk", "рассужд", "мысл", "思维", "推理", "思考", "想法"),
    "SELF": ("tuo", "tua", "tuoi", "tue", "seu", "sua", "seus", "suas", "você", "deiner", "deinen", "dir", "ti", "te", "свои", "своё", "свою", "твои", "твоё", "твою", "тебе", "тебя", "your", "you", "yourself", "yours", "model's", "ton", "tes", "tu", "tus", "dein", "deine", "твой",
             "свой", "你"),
    "PRIOR": ("antes", "zuvor", "bisherig", "auparavant", "avant", "ранее", "до этого", "прежн", "исходн", "ursprüng", "inicia", "inizial", "début", "sopra", "arriba", "oben", "выше", "previous", "prior", "above", "earlier", "preced", "former", "before", "initial", "first", "old",
              "existing", "so far", "précéd", "anterior", "vorherig", "vorher", "предыдущ", "之前", "最初", "以上"),
    "INSTR": ("instruc", "indicac", "vorgab", "richtlini", "regol", "regra", "diretriz", "direttiv", "указан", "configura", "instruct", "rule", "guideline", "directiv", "direction", "constraint", "programming", "order",
              "polic", "guardrail", "prompt", "setup", "configur", "preamble", "consign", "règle", "regla", "regel",
              "anweisung", "istruzion", "instruç", "инструкц", "правил", "промпт", "指令", "指示", "规则", "提示"),
    "SYS": ("desarroll", "sviluppat", "desenvolved", "entwickler", "betreiber", "operador", "разработчик", "оператор", "développeur", "opérateur", "system", "developer", "operator", "admin", "deploy", "meta", "pre-prompt", "système", "sistema",
            "systemprompt", "систем", "系统"),
    "CANCEL": ("dimentic", "esqueç", "esquec", "desconsider", "vergess", "annul", "anula", "non valgono", "ya no valen", "não valem", "nicht mehr", "plus aucun", "больше не", "ignor", "disregard", "forget", "overrid", "bypass", "discard", "abandon", "drop", "void", "cancel",
               "revok", "expir", "delet", "obsolet", "no longer", "scrap", "aside", "oubli", "olvid", "vergiss",
               "забуд", "игнор", "忽略", "忘记", "无视"),
    "PROB": ("логит", "logprob", "log-prob", "logit", "probab", "softmax", "distribution", "confidence", "likelihood",
             "scores", "odds", "wahrscheinlich", "вероятн", "概率"),
    "TOKEN": ("candidat", "token", "candidate", "vocabular", "alternativ", "continuation", "position", "next-token", "runner",
              "guess", "токен", "词元"),
    "TRAIN": ("entrenamiento", "entraînement", "addestrament", "treino", "trainingsdat", "training", "dataset", "fine-tun", "finetun", "distil", "student", "corpus", "supervis", "harvest",
              "collect", "my own model", "my model"),
    "PERSONA": ("dan", "jailbr", "unrestrict", "evil", "persona", "roleplay", "pretend", "developer mode", "freegpt",
                "never refus", "no restrictions"),
    "VERBATIM": ("literal", "al pie de la letra", "alla lettera", "palavra por palavra", "parola per parola", "wörtlich", "tal cual", "exatament", "esattament", "ungekürzt", "sin resumir", "senza riassumere", "sem resumir", "sans rien résumer", "sans résumer", "без сокращ", "verbatim", "word for word", "exactly", "unabridg", "in full", "as-is", "every", "nothing omitted",
                 "word-for-word", "mot pour mot", "palabra por palabra", "wortwört", "дословно", "逐字", "原样"),
    "QUESTION": ("qual", "cuál", "quali", "welche", "wie", "какие", "what", "how", "why", "explain", "which", "when", "who", "qu'est", "qué", "was ist", "что", "什么",
                 "如何"),
}

_MULTIWORD = {s: c for c, stems in CONCEPTS.items() for s in stems if " " in s or not s.isascii()}
_STEMS = {s: c for c, stems in CONCEPTS.items() for s in stems if " " not in s and s.isascii()}
_LENGTHS = sorted({len(s) for s in _STEMS}, reverse=True)
# the lookahead on first letters lets the engine skip most positions before it tries ~150 alternatives
_SPLIT = re.compile("(?=[" + "".join(sorted({re.escape(s[0]) for s in _MULTIWORD})) + "])("
                    + "|".join(sorted(map(re.escape, _MULTIWORD), key=len, reverse=True)) + ")")
_WORD = re.compile(r"[\w'-]+")


def concept_words(text: str) -> list[tuple[str, str]]:
    """(concept, word) for each word of a normalised text, in order; '' for a word of no concept, so that
    windows count words, not concepts."""
    out: list[tuple[str, str]] = []
    for piece in _SPLIT.split(text):
        if piece in _MULTIWORD:
            out.append((_MULTIWORD[piece], piece))
            continue
        for word in _WORD.findall(piece):
            concept = None
            for n in _LENGTHS:
                # stems of three letters or fewer ("you", "tu", "dan") must be the whole word
                if n <= len(word) and word[:n] in _STEMS and (n > 3 or n == len(word)):
                    concept = _STEMS[word[:n]]
                    break
            out.append((concept or "", word))
    return out


def concept_sequence(text: str) -> list[str]:
    """The concept of each word of a normalised text ('' for none), in order."""
    return [c for c, _ in concept_words(text)]


def concept_features(text: str, window: int = 6) -> list[str]:
    """Concept unigrams and ordered concept pairs within `window` words: the names the model hashes."""
    seq = concept_sequence(text)
    feats = [f"c:{c}" for c in seq if c]
    positions = [(i, c) for i, c in enumerate(seq) if c]
    for a in range(len(positions)):
        i, ca = positions[a]
        for b in range(a + 1, len(positions)):
            j, cb = positions[b]
            if j - i > window:
                break
            if ca != cb:
                feats.append(f"p:{ca}>{cb}")
    return feats
