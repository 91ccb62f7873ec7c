"""BCP 47 subtags a language tag may carry after its language, from the IANA Language Subtag Registry
(File-Date 2021-08-06, as shipped in langcodes 3.5.1; private-use ranges left out), in lower case.

Only these are dropped when a locale tag is looked up as a voice (``es-ES`` -> es, ``zh-Hant-TW`` ->
zh-Hant): a typo or a made-up name (``no-such-voice``, ``fr-female``) must not become another voice.
"""

from __future__ import annotations

import re

REGIONS = frozenset(
    """
    001 002 003 005 009 011 013 014 015 017 018 019 021 029 030 034 035 039 053 054 057 061 142 143
    145 150 151 154 155 202 419 aa ac ad ae af ag ai al am an ao aq ar as at au aw ax az ba bb bd be
    bf bg bh bi bj bl bm bn bo bq br bs bt bu bv bw by bz ca cc cd cf cg ch ci ck cl cm cn co cp cr
    cs cu cv cw cx cy cz dd de dg dj dk dm do dz ea ec ee eg eh er es et eu ez fi fj fk fm fo fr fx
    ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk hm hn hr ht hu ic id ie il im in io
    iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc
    md me mf mg mh mk ml mm mn mo mp mq mr ms mt mu mv mw mx my mz na nc ne nf ng ni nl no np nr nt
    nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa re ro rs ru rw sa sb sc sd se sg sh si sj
    sk sl sm sn so sr ss st su sv sx sy sz ta tc td tf tg th tj tk tl tm tn to tp tr tt tv tw tz ua
    ug um un us uy uz va vc ve vg vi vn vu wf ws yd ye yt yu za zm zr zw zz
    """.split()
)
SCRIPTS = frozenset(
    """
    adlm afak aghb ahom arab aran armi armn avst bali bamu bass batk beng bhks blis bopo brah brai
    bugi buhd cakm cans cari cham cher chrs cirt copt cpmn cprt cyrl cyrs deva diak dogr dsrt dupl
    egyd egyh egyp elba elym ethi geok geor glag gong gonm goth gran grek gujr guru hanb hang hani
    hano hans hant hatr hebr hira hluw hmng hmnp hrkt hung inds ital jamo java jpan jurc kali kana
    khar khmr khoj kitl kits knda kore kpel kthi lana laoo latf latg latn leke lepc limb lina linb
    lisu loma lyci lydi mahj maka mand mani marc maya medf mend merc mero mlym modi mong moon mroo
    mtei mult mymr nand narb nbat newa nkdb nkgb nkoo nshu ogam olck orkh orya osge osma ougr palm
    pauc pcun pelm perm phag phli phlp phlv phnx piqd plrd prti psin ranj rjng rohg roro runr samr
    sara sarb saur sgnw shaw shrd shui sidd sind sinh sogd sogo sora soyo sund sylo syrc syre syrj
    syrn tagb takr tale talu taml tang tavt telu teng tfng tglg thaa thai tibt tirh tnsa toto ugar
    vaii visp vith wara wcho wole xpeo xsux yezi yiii zanb zinh zmth zsye zsym zxxx zyyy zzzz
    """.split()
)
VARIANTS = frozenset(
    """
    1606nict 1694acad 1901 1959acad 1994 1996 abl1943 akuapem alalc97 aluku ao1990 aranes arevela
    arevmda arkaika asante auvern baku1926 balanka barla basiceng bauddha biscayan biske bohoric
    boont bornholm cisaup colb1945 cornu creiss dajnko ekavsk emodeng fonipa fonkirsh fonnapa fonupa
    fonxsamp gallo gascon grclass grital grmistr hepburn heploc hognorsk hsistemo ijekavsk itihasa
    ivanchov jauer jyutping kkcor kociewie kscor laukika lemosin lengadoc lipaw luna1918 metelko
    monoton ndyuka nedis newfound nicard njiva nulik osojs oxendict pahawh2 pahawh3 pahawh4 pamaka
    peano petr1708 pinyin polyton provenc puter rigik rozaj rumgr scotland scouse simple solba sotav
    spanglis surmiran sursilv sutsilv synnejyl tarask tongyong tunumiit uccor ucrcor ulster unifon
    vaidika valencia vallader vecdruka vivaraup wadegile xsistemo
    """.split()
)

#: the extensions and private-use part that may end a tag: ``u-ca-buddhist``, ``x-lesson``
_TAIL = re.compile(r"([0-9a-wyz](-[0-9a-z]{2,8})+-)*([0-9a-wyz](-[0-9a-z]{2,8})+|x(-[0-9a-z]{1,8})+)")


def is_locale_subtag(subtag: str) -> bool:
    """Whether ``subtag`` (lower case) is a registered region, script or variant."""
    return subtag in REGIONS or subtag in SCRIPTS or subtag in VARIANTS


def strip_extensions(subtags: list[str]) -> list[str] | None:
    """``subtags`` without their extension and private-use tail (``en-us-x-lesson`` -> en-us), or
    None when that tail is not well formed; unchanged when there is none."""
    for i, subtag in enumerate(subtags[1:], 1):
        if len(subtag) == 1:
            return subtags[:i] if _TAIL.fullmatch("-".join(subtags[i:])) else None
    return subtags
