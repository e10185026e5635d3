#!/usr/bin/env python3
"""Generate the minibert toy English->German translation data set.

Each sentence pair comes from one abstract structure (subject, verb, objects,
prepositional phrase, adverbial, subordinate or relative clause) that is
realised twice: as natural English and, by rule, as correct German.  The
German side exercises gender, case (nominative/accusative/dative), plural
agreement, adjective declension, person/number conjugation, the perfect with
haben/sein, modal verbs, separable verbs, verb-second after a fronted
element, verb-first questions and verb-final subordinate/relative clauses.

Compositional hold-out (see HOLD_OUT): sentences containing certain
adjective+noun pairs, nouns in a certain case, a verb in a verb-final clause
or a verb in a question go only to test_compositional; every word of every
split still occurs in train.

Only the standard library is used and all randomness comes from one
random.Random(seed), so  `python data/make_toy.py`  rewrites the committed
files byte for byte.
"""
import argparse
import os
import random
from collections import namedtuple
from functools import partial
from itertools import accumulate
from types import SimpleNamespace as Clause

SEED = 1234
N_TRAIN = 25000
N_EVAL = 1000  # valid, test and test_compositional each
MAX_EN_WORDS = 20

# --------------------------------------------------------------- lexicon ----
# Nouns: English sg/pl, German sg/pl, gender, tags.  The first tag is the
# semantic class (p person, an animal, thing, food, place, story); further
# tags license verbs (read, open, buy, give, draw, see, visit); noposs: no
# possessive determiner ("my man" would mean "my husband").
NOUN_TABLE = """
man       men        Mann       Männer      m p,noposs
woman     women      Frau       Frauen      f p,noposs
child     children   Kind       Kinder      n p
boy       boys       Junge      Jungen      m p
girl      girls      Mädchen    Mädchen     n p
baby      babies     Baby       Babys       n p
teacher   teachers   Lehrer     Lehrer      m p
doctor    doctors    Arzt       Ärzte       m p
king      kings      König      Könige      m p
queen     queens     Königin    Königinnen  f p
friend    friends    Freund     Freunde     m p
mother    mothers    Mutter     Mütter      f p
father    fathers    Vater      Väter       m p
brother   brothers   Bruder     Brüder      m p
sister    sisters    Schwester  Schwestern  f p
dog       dogs       Hund       Hunde       m an
cat       cats       Katze      Katzen      f an
horse     horses     Pferd      Pferde      n an
bird      birds      Vogel      Vögel       m an
mouse     mice       Maus       Mäuse       f an
cow       cows       Kuh        Kühe        f an
duck      ducks      Ente       Enten       f an
pig       pigs       Schwein    Schweine    n an
book      books      Buch       Bücher      n thing,read,open,buy,give
letter    letters    Brief      Briefe      m thing,read,open,give
newspaper newspapers Zeitung    Zeitungen   f thing,read,buy,give
story     stories    Geschichte Geschichten f story,read
ball      balls      Ball       Bälle       m thing,buy,give,draw
key       keys       Schlüssel  Schlüssel   m thing,buy,give
cup       cups       Tasse      Tassen      f thing,buy,give
bottle    bottles    Flasche    Flaschen    f thing,open,buy,give
bag       bags       Tasche     Taschen     f thing,open,buy,give
hat       hats       Hut        Hüte        m thing,buy,give,draw
picture   pictures   Bild       Bilder      n thing,buy,give,draw
flower    flowers    Blume      Blumen      f thing,buy,give,draw
gift      gifts      Geschenk   Geschenke   n thing,open,buy,give
box       boxes      Kiste      Kisten      f thing,open,buy,give
door      doors      Tür        Türen       f thing,open
window    windows    Fenster    Fenster     n thing,open
apple     apples     Apfel      Äpfel       m food,buy,give
cake      cakes      Kuchen     Kuchen      m food,buy,give
pear      pears      Birne      Birnen      f food,buy,give
egg       eggs       Ei         Eier        n food,buy,give
banana    bananas    Banane     Bananen     f food,buy,give
carrot    carrots    Karotte    Karotten    f food,buy,give
garden    gardens    Garten     Gärten      m place,see
park      parks      Park       Parks       m place,see,visit
kitchen   kitchens   Küche      Küchen      f place
house     houses     Haus       Häuser      n place,see,draw
school    schools    Schule     Schulen     f place,see,visit
city      cities     Stadt      Städte      f place,see,visit
forest    forests    Wald       Wälder      m place,see
room      rooms      Zimmer     Zimmer      n place
"""
WEAK_NOUNS = ("Junge",)  # weak masculine: -n in accusative/dative singular

# Adjectives: English, German stem, noun classes they may describe.
ADJ_TABLE = """
big groß p,an,thing,food,place      small klein p,an,thing,food,place
old alt p,an,thing,place,story      young jung p,an
new neu thing,place,story           beautiful schön p,an,thing,place,story
red rot thing,food                  green grün thing,food
blue blau thing                     yellow gelb thing,food
black schwarz an,thing              white weiß an,thing
brown braun an                      heavy schwer thing
tired müde p,an                     hungry hungrig p,an
happy glücklich p,an                sad traurig p,story
friendly freundlich p,an            clever klug p,an
funny lustig p,story
"""

# Verbs: English base/3sg/participle ("_" = space); German infinitive
# (without separable prefix)/2sg/3sg/participle; frame: intr | acc | dat
# (dative object) | ditr (dative + accusative) | that (dass-clause); subject
# class: p (persons) or a (persons and animals); options: obj/io = noun tags
# allowed as (indirect) object, pps = prepositions, aux = perfect auxiliary
# (default haben), prefix = separable prefix, tenses (default all), de1 = 1sg.
VERB_TABLE = """
sleep   sleeps   slept     schlafen  schläfst  schläft  geschlafen intr a pps=in
laugh   laughs   laughed   lachen    lachst    lacht    gelacht    intr p pps=mit,in
sing    sings    sung      singen    singst    singt    gesungen   intr p pps=mit,fuer,in
play    plays    played    spielen   spielst   spielt   gespielt   intr a pps=mit,ohne,in
work    works    worked    arbeiten  arbeitest arbeitet gearbeitet intr p pps=mit,fuer,in
wait    waits    waited    warten    wartest   wartet   gewartet   intr a pps=in
swim    swims    swum      schwimmen schwimmst schwimmt geschwommen intr a pps=mit,ohne aux=sein
run     runs     run       laufen    läufst    läuft    gelaufen   intr a pps=mit,ohne,in aux=sein
come    comes    come      kommen    kommst    kommt    gekommen   intr a pps=mit,ohne aux=sein
see     sees     seen      sehen     siehst    sieht    gesehen    acc a obj=p,an,thing,food,see pps=in
read    reads    read      lesen     liest     liest    gelesen    acc p obj=read pps=mit,in
buy     buys     bought    kaufen    kaufst    kauft    gekauft    acc p obj=buy pps=fuer,in
find    finds    found     finden    findest   findet   gefunden   acc a obj=p,an,give pps=in
eat     eats     eaten     essen     isst      isst     gegessen   acc a obj=food pps=mit,in
draw    draws    drawn     zeichnen  zeichnest zeichnet gezeichnet acc p obj=p,an,draw pps=fuer
open    opens    opened    öffnen    öffnest   öffnet   geöffnet   acc p obj=open pps=fuer
visit   visits   visited   besuchen  besuchst  besucht  besucht    acc p obj=p,visit pps=mit,ohne
love    loves    loved     lieben    liebst    liebt    geliebt    acc a obj=p,an tenses=pres
call    calls    called    rufen     rufst     ruft     angerufen  acc p obj=p prefix=an
pick_up picks_up picked_up holen     holst     holt     abgeholt   acc p obj=p prefix=ab
invite  invites  invited   laden     lädst     lädt     eingeladen acc p obj=p prefix=ein
help    helps    helped    helfen    hilfst    hilft    geholfen   dat p obj=p pps=in
thank   thanks   thanked   danken    dankst    dankt    gedankt    dat p obj=p
follow  follows  followed  folgen    folgst    folgt    gefolgt    dat a obj=p,an aux=sein
give    gives    given     geben     gibst     gibt     gegeben    ditr p obj=give io=p,an
show    shows    shown     zeigen    zeigst    zeigt    gezeigt    ditr p obj=give,an io=p
bring   brings   brought   bringen   bringst   bringt   gebracht   ditr p obj=give io=p
say     says     said      sagen     sagst     sagt     gesagt     that p tenses=pres,perf
know    knows    known     wissen    weißt     weiß     gewusst    that p tenses=pres de1=weiß
"""

Noun = namedtuple("Noun", "en en_pl de de_pl g tags")
Adj = namedtuple("Adj", "en de classes")
Verb = namedtuple("Verb", "en en3 enpp de de2 de3 depp frame subj obj io pps aux prefix tenses de1")


def parse_verb(line):
    f = line.split()
    opts = dict(o.split("=") for o in f[9:])
    return Verb(*[w.replace("_", " ") for w in f[:3]], *f[3:9],
                *[tuple(opts[k].split(",")) if k in opts else () for k in ("obj", "io", "pps")],
                opts.get("aux", "haben"), opts.get("prefix", ""),
                tuple(opts.get("tenses", "pres,perf,can,must,want").split(",")), opts.get("de1"))


NOUNS = [Noun(*f[:5], tuple(f[5].split(","))) for f in map(str.split, NOUN_TABLE.strip().splitlines())]
ADJECTIVES = [Adj(*f[i:i + 2], tuple(f[i + 2].split(","))) for f in map(str.split, ADJ_TABLE.strip().splitlines())
              for i in range(0, len(f), 3)]
VERBS = [parse_verb(line) for line in VERB_TABLE.strip().splitlines()]

PERSONS = ("1sg", "2sg", "3sg", "1pl", "3pl")
PRONOUNS = [("I", "ich", "1sg"), ("you", "du", "2sg"), ("he", "er", "3sg"), ("she", "sie", "3sg"),
            ("we", "wir", "1pl"), ("they", "sie", "3pl")]
NAMES = ["Anna", "Lisa", "Maria", "Paul", "Peter", "Tom"]
POSSESSIVES = [("my", "mein"), ("your", "dein"), ("his", "sein"), ("her", "ihr"),
               ("our", "unser"), ("their", "ihr")]
# Time adverbials: English, German, tenses they combine with.
ADVERBS = [(e, d, tuple(t.split())) for e, d, t in [
    ("today", "heute", "pres perf can must want"), ("every day", "jeden Tag", "pres can must"),
    ("in the morning", "am Morgen", "pres can must want"),
    ("in the evening", "am Abend", "pres can must want"),
    ("on Sunday", "am Sonntag", "pres can must want"), ("this morning", "heute Morgen", "perf"),
]]
# Prepositions: English, German, case governed, noun classes of the object.
PREPS = {"mit": ("with", "mit", "dat", ("p", "an")), "fuer": ("for", "für", "acc", ("p", "an")),
         "ohne": ("without", "ohne", "acc", ("p", "an")), "in": ("in", "in", "dat", ("place",))}
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "brown")
STATES = ("tired", "hungry", "happy", "sad")  # predicative adjectives that take time adverbs
CLASHES = [("old", "young"), ("young", "old"), ("big", "small"), ("small", "big"),
           ("happy", "sad"), ("sad", "happy")]
TENSE_WEIGHTS = {"pres": 45, "perf": 30, "can": 10, "must": 5, "want": 10}


def table(keys, rows):
    """{row name: {key: word}} from 'name: w1 w2 ...' rows ('-' = empty)."""
    return {name: dict(zip(keys, (w.strip("-") for w in words.split())))
            for name, words in (row.split(":") for row in rows)}


GENDERS = ("m", "f", "n", "pl")
DEF = table(GENDERS, ["nom: der die das die", "acc: den die das die", "dat: dem der dem den"])
EIN_END = table(GENDERS, ["nom: - e - e", "acc: en e - e", "dat: em er em en"])
AUX = table(PERSONS, ["haben: habe hast hat haben haben", "sein: bin bist ist sind sind"])
MODALS = table(PERSONS, ["can: kann kannst kann können können", "must: muss musst muss müssen müssen",
                         "want: will willst will wollen wollen"])
BE_EN = table(PERSONS, ["be: am are is are are"])["be"]

# ------------------------------------------------- compositional hold-out ----
# Sentences record features while their German is built; a sentence with any
# of these features goes only to test_compositional.
HOLD_OUT = {
    # adjective + noun, attributive ("die schwarze Katze") or predicative ("die Katze ist schwarz")
    "adj": [("adj", "black", "cat"), ("adj", "old", "horse"), ("adj", "red", "ball"),
            ("adj", "small", "bird")],
    # noun in a case and number: "dem/einem/meinem Hund", "den/einen/unseren Lehrer"
    "case": [("case", "dog", "dat", "sg"), ("case", "teacher", "acc", "sg")],
    # verb at the end of a weil/obwohl/wenn/dass/relative clause ("..., weil sie liest")
    "final": [("final", "read")],
    # verb in a yes/no question ("Ruft sie den Arzt an?")
    "question": [("q", "call")],
}


def held_out(feats):
    """The hold-out categories that a sentence's features hit."""
    return [cat for cat, items in HOLD_OUT.items() if any(f in items for f in feats)]


# ------------------------------------------------------ noun phrases ----
NP = namedtuple("NP", "kind word num det adj")  # kind: noun | name | pron; det: the | a | possessive
_CACHE = {}


def np_class(np):
    return np.word.tags[0] if np.kind == "noun" else "p"


def person(np):
    return np.word[2] if np.kind == "pron" else "3pl" if np.num == "pl" else "3sg"


def matching(kind, key):
    """Nouns with any of the tags `key`, adjectives for class `key` or adverbs for tense `key`."""
    if (kind, key) not in _CACHE:
        _CACHE[kind, key] = ([n for n in NOUNS if any(t in key for t in n.tags)] if kind == "noun"
                             else [a for a in ADJECTIVES if key in a.classes] if kind == "adj"
                             else [a for a in ADVERBS if key in a[2]])
    return _CACHE[kind, key]


def clash(pred, attr):
    """True if a predicative adjective repeats or contradicts the attributive one."""
    return attr is not None and (pred == attr or (pred.en, attr.en) in CLASHES
                                 or (pred.en in COLOURS and attr.en in COLOURS))


def make_np(rng, tags, name_ok=True, p_pl=0.25, p_adj=0.3, dets=(50, 25, 25), bare_pl=True):
    if name_ok and "p" in tags and rng.random() < 0.12:
        return NP("name", rng.choice(NAMES), "sg", None, None)
    noun = rng.choice(matching("noun", tags))
    num = "pl" if rng.random() < p_pl else "sg"
    det = rng.choices(["the", "a", "poss"], weights=dets)[0]
    if det == "poss":
        det = "the" if "noposs" in noun.tags else rng.choice(POSSESSIVES)
    if det == "a" and not bare_pl:
        num = "sg"
    adj = rng.choice(matching("adj", noun.tags[0])) if rng.random() < p_adj else None
    return NP("noun", noun, num, det, adj)


def make_subject(rng, vsubj):
    r = rng.random()
    if r < 0.22:
        return NP("pron", rng.choice(PRONOUNS), None, None, None)
    if r < 0.34:
        return NP("name", rng.choice(NAMES), "sg", None, None)
    return make_np(rng, ("p",) if vsubj == "p" else ("p", "an"), name_ok=False, p_adj=0.25,
                   dets=(60, 10, 30), bare_pl=False)


def en_np(np):
    if np.kind != "noun":
        return [np.word if np.kind == "name" else np.word[0]]
    words = ([np.adj.en] if np.adj else []) + [np.word.en_pl if np.num == "pl" else np.word.en]
    if np.det == "a":
        return words if np.num == "pl" else ["an" if words[0][0] in "aeiou" else "a"] + words
    return ["the" if np.det == "the" else np.det[0]] + words


def adj_ending(decl, case, g):
    if decl == "weak":  # after der/die/das, and after ein-words in the plural
        return "e" if g != "pl" and (case == "nom" or (case == "acc" and g != "m")) else "en"
    if decl == "strong":  # plural without article
        return "en" if case == "dat" else "e"
    if case == "dat" or (case == "acc" and g == "m"):  # mixed: after ein-words, singular
        return "en"
    return {"m": "er", "f": "e", "n": "es"}[g]


def de_np(np, case, feats):
    if np.kind != "noun":
        return [np.word if np.kind == "name" else np.word[1]]
    n, pl = np.word, np.num == "pl"
    g = "pl" if pl else n.g
    feats.append(("case", n.en, case, np.num))
    if np.det == "the":
        art, decl = DEF[case][g], "weak"
    elif np.det == "a":
        art, decl = (None, "strong") if pl else ("ein" + EIN_END[case][g], "mixed")
    else:
        art, decl = np.det[1] + EIN_END[case][g], "weak" if pl else "mixed"
    if pl:  # dative plural adds -n unless the plural ends in -n or -s
        noun = n.de_pl + ("n" if case == "dat" and not n.de_pl.endswith(("n", "s")) else "")
    else:
        noun = n.de + ("n" if case != "nom" and n.de in WEAK_NOUNS else "")
    words = [art] if art else []
    if np.adj:
        feats.append(("adj", np.adj.en, n.en))
        end, stem = adj_ending(decl, case, g), np.adj.de
        words.append(stem + (end[1:] if stem.endswith("e") else end))  # müde + en -> müden
    return words + [noun]


# ------------------------------------------------------------ clauses ----
def gen_clause(rng, frames=("intr", "acc", "dat", "ditr"), tenses=tuple(TENSE_WEIGHTS), copula=0.0,
               adv=0.0, pp=0.0, subj=None, obj_noun=False):
    """Draw one clause (copula + adjective with probability `copula`); `subj` may be given."""
    c = Clause(subj=subj, verb=None, adj=None, tense="pres", io=None, obj=None, pp=None,
               adv=None, front=False)
    if rng.random() < copula:
        if c.subj is None:
            c.subj = (make_subject(rng, "p") if rng.random() < 0.5
                      else make_np(rng, ("an", "thing", "food", "place", "story"), p_adj=0.1,
                                   bare_pl=False))
        while c.adj is None or clash(c.adj, c.subj.adj):
            c.adj = rng.choice(matching("adj", np_class(c.subj)))
    else:
        cls = np_class(subj) if subj else None
        key = ("verb", frames, tenses, cls)
        if key not in _CACHE:
            _CACHE[key] = [v for v in VERBS if v.frame in frames and any(t in tenses for t in v.tenses)
                           and (cls is None or cls == "p" or (cls == "an" and v.subj == "a"))]
        v = c.verb = rng.choice(_CACHE[key])
        ts = [t for t in tenses if t in v.tenses]
        c.tense = rng.choices(ts, weights=[TENSE_WEIGHTS[t] for t in ts])[0]
        c.subj = c.subj or make_subject(rng, v.subj)
        used = [c.subj.word]  # no noun twice in one clause ("the man sees the man")
        for slot, tags, ok in (("io", v.io, v.frame == "ditr"),
                               ("obj", v.obj, v.frame in ("acc", "dat", "ditr"))):
            while ok:
                np = make_np(rng, tags, name_ok=not obj_noun, p_adj=0.2 if slot == "io" else 0.3)
                if np.word not in used:
                    setattr(c, slot, np)
                    used.append(np.word)
                    break
        if v.pps and rng.random() < pp:
            prep = rng.choice(v.pps)
            c.pp = (prep, make_np(rng, ("place",), p_pl=0, p_adj=0.1, dets=(75, 0, 25)) if prep == "in"
                    else make_np(rng, PREPS[prep][3], p_pl=0.1, p_adj=0.2))
    if rng.random() < adv and (c.adj is None or c.adj.en in STATES):
        c.adv = rng.choice(matching("adv", c.tense))
    return c


def en_clause(c, mode="decl", relpron=None):
    """English words of a clause; mode: decl | q (question) | rel (subject -> relpron)."""
    p = person(c.subj)
    subj = [relpron] if mode == "rel" else en_np(c.subj)
    if c.verb is None:
        words = ([BE_EN[p]] + subj if mode == "q" else subj + [BE_EN[p]]) + [c.adj.en]
    else:
        v, aux, do = c.verb, None, "does" if p == "3sg" else "do"
        if c.tense == "pres":
            aux, main = (do, v.en) if mode == "q" else (None, v.en3 if p == "3sg" else v.en)
        elif c.tense == "perf":
            aux, main = "has" if p == "3sg" else "have", v.enpp
        elif c.tense == "want":
            want = "wants" if p == "3sg" and mode != "q" else "want"
            aux, main = (do if mode == "q" else None), want + " to " + v.en
        else:
            aux, main = c.tense, v.en
        words = ([aux] + subj if mode == "q" else subj + ([aux] if aux else [])) + main.split()
        for np in (c.io, c.obj):
            words += en_np(np) if np else []
    if c.pp:
        words += [PREPS[c.pp[0]][0]] + en_np(c.pp[1])
    return words + (c.adv[0].split() if c.adv and not c.front else [])


def de_clause(c, mode, feats, front=None, relpron=None):
    """German words of a clause; mode: main (verb second) | q (verb first) | sub | rel (verb last)."""
    p = person(c.subj)
    subj = [relpron] if mode == "rel" else de_np(c.subj, "nom", feats)
    if c.verb is None:
        fin, rb = AUX["sein"][p], [c.adj.de]  # rb: right bracket, the end of a main clause
        cluster = rb + [fin]                   # verb cluster at the end of a subordinate clause
        if c.subj.kind == "noun":
            feats.append(("adj", c.adj.en, c.subj.word.en))
    else:
        v = c.verb
        feats.append(("final", v.en) if mode in ("sub", "rel") else (mode, v.en))
        if c.tense == "pres":
            fin = {"1sg": v.de1 or v.de[:-1], "2sg": v.de2, "3sg": v.de3}.get(p, v.de)
            rb, cluster = ([v.prefix] if v.prefix else []), [v.prefix + fin]
        elif c.tense == "perf":
            fin, rb = AUX[v.aux][p], [v.depp]
            cluster = rb + [fin]
        else:
            fin, rb = MODALS[c.tense][p], [v.prefix + v.de]
            cluster = rb + [fin]
    mf = c.adv[1].split() if c.adv and not c.front else []  # middle field: adverb, objects, PP
    if c.io:
        mf += de_np(c.io, "dat", feats)
    if c.obj:
        mf += de_np(c.obj, "dat" if c.verb.frame == "dat" else "acc", feats)
    if c.pp:
        pp = [PREPS[c.pp[0]][1]] + de_np(c.pp[1], PREPS[c.pp[0]][2], feats)
        mf += ["im"] + pp[2:] if pp[:2] == ["in", "dem"] else pp  # in dem -> im
    if mode == "main":
        return (front + [fin] + subj if front else subj + [fin]) + mf + rb
    return [fin] + subj + mf + rb if mode == "q" else subj + mf + cluster


# ---------------------------------------------------------- sentences ----
# Each template returns (English words, German words, final punctuation).
def s_simple(rng, feats, copula=0.0):
    c = gen_clause(rng, copula=copula, adv=0.45, pp=0.45)
    c.front = c.adv is not None and rng.random() < 0.5
    en = (c.adv[0].split() if c.front else []) + en_clause(c)
    return en, de_clause(c, "main", feats, front=c.adv[1].split() if c.front else None), "."


def s_question(rng, feats):
    c = gen_clause(rng, tenses=("pres", "perf", "can", "want"), copula=0.15, adv=0.3, pp=0.35)
    return en_clause(c, "q"), de_clause(c, "q", feats), "?"


def s_because(rng, feats):
    en_conj, de_conj = rng.choice([("because", "weil"), ("because", "weil"), ("although", "obwohl")])
    main = gen_clause(rng, adv=0.2, pp=0.25)
    sub = gen_clause(rng, copula=0.35, adv=0.15, pp=0.25)
    en = en_clause(main) + ([","] if en_conj == "although" else []) + [en_conj] + en_clause(sub)
    return en, de_clause(main, "main", feats) + [",", de_conj] + de_clause(sub, "sub", feats), "."


def s_fronted(rng, feats):
    en_conj, de_conj = rng.choice([("because", "weil"), ("if", "wenn")])
    tenses = ("pres",) if en_conj == "if" else tuple(TENSE_WEIGHTS)
    sub = gen_clause(rng, tenses=tenses, copula=0.4, adv=0.15, pp=0.2)
    main = gen_clause(rng, tenses=("pres", "can", "must", "want"), adv=0.2, pp=0.25)
    front = [de_conj] + de_clause(sub, "sub", feats) + [","]
    return [en_conj] + en_clause(sub) + [","] + en_clause(main), de_clause(main, "main", feats, front), "."


def s_that(rng, feats):
    matrix = gen_clause(rng, frames=("that",))
    emb = gen_clause(rng, copula=0.3, adv=0.2, pp=0.3)
    en = en_clause(matrix) + ["that"] + en_clause(emb)
    return en, de_clause(matrix, "main", feats) + [",", "dass"] + de_clause(emb, "sub", feats), "."


def s_relative(rng, feats):
    main = gen_clause(rng, frames=("acc", "dat"), obj_noun=True)
    ante, cls = main.obj, np_class(main.obj)
    rel = gen_clause(rng, frames=("intr", "acc", "dat"), tenses=("pres", "perf"),
                     copula=0.3 if cls in ("p", "an") else 1.0, adv=0.15, pp=0.3, subj=ante)
    relpron = DEF["nom"]["pl" if ante.num == "pl" else ante.word.g]
    en = en_clause(main) + en_clause(rel, "rel", "who" if cls == "p" else "that")
    return en, de_clause(main, "main", feats) + [","] + de_clause(rel, "rel", feats, relpron=relpron), "."


TEMPLATES = [(s_simple, 24), (partial(s_simple, copula=1.0), 6), (s_question, 12), (s_because, 16), (s_fronted, 14),
             (s_that, 12), (s_relative, 16)]
TEMPLATE_CUM_WEIGHTS = list(accumulate(w for _, w in TEMPLATES))


def sample(rng):
    """Draw one sentence pair: (English, German, features recorded while building the German)."""
    while True:
        feats = []
        template = rng.choices(TEMPLATES, cum_weights=TEMPLATE_CUM_WEIGHTS)[0][0]
        en, de, end = template(rng, feats)
        if 3 <= len(en) - en.count(",") <= MAX_EN_WORDS:
            en, de = (" ".join(w).replace(" ,", ",") + end for w in (en, de))
            return en[0].upper() + en[1:], de[0].upper() + de[1:], feats


# --------------------------------------------------------------- main ----
def words(pair):
    return " ".join(pair).replace(",", "").replace(".", "").replace("?", "").split()


def generate(seed):
    """All splits as {name: [(English, German), ...]}, deduplicated on English.
    Every word of valid, test and test_compositional also occurs in train."""
    rng = random.Random(seed)
    seen, pool = {}, []  # seen: English -> German, for deduplication and a consistency check
    while len(pool) < N_TRAIN + 3 * N_EVAL:  # one N_EVAL of slack for the vocabulary filter
        en, de, feats = sample(rng)
        if held_out(feats):
            continue
        if en not in seen:
            pool.append((en, de))
        assert seen.setdefault(en, de) == de, (en, seen[en], de)
    rng.shuffle(pool)
    splits = {"train": pool[:N_TRAIN]}
    vocab = {w for pair in splits["train"] for w in words(pair)}
    known = [pair for pair in pool[N_TRAIN:] if all(w in vocab for w in words(pair))]
    splits["valid"], splits["test"] = known[:N_EVAL], known[N_EVAL:2 * N_EVAL]
    assert len(splits["test"]) == N_EVAL
    splits["test_compositional"] = comp = []
    cats = list(HOLD_OUT)
    for i in range(N_EVAL):  # cycle through the categories, and through the items of each
        items = HOLD_OUT[cats[i % len(cats)]]
        want = items[i // len(cats) % len(items)]
        while True:
            en, de, feats = sample(rng)
            assert seen.get(en, de) == de, (en, seen[en], de)
            if want in feats and en not in seen and all(w in vocab for w in words((en, de))):
                break
        seen[en] = de
        comp.append((en, de))
    return splits


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output directory (default: this script's folder)")
    ap.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, pairs in generate(args.seed).items():
        for lang, idx in (("en", 0), ("de", 1)):
            with open(os.path.join(args.out, f"{name}.{lang}"), "w", encoding="utf-8", newline="\n") as f:
                f.write("".join(p[idx] + "\n" for p in pairs))
        avg = [sum(len(p[i].split()) for p in pairs) / len(pairs) for i in (0, 1)]
        print(f"{name:20s} {len(pairs):6d} pairs, avg words en {avg[0]:.1f} de {avg[1]:.1f}")


if __name__ == "__main__":
    main()
