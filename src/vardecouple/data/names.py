"""English names of variety codes, for prompts and reports."""

from __future__ import annotations

__all__ = ["VARIETY_NAMES", "variety_name"]

VARIETY_NAMES: dict[str, str] = {
    # Arabic (FLORES-200 codes; ajp = South Levantine, apc = North Levantine)
    "arb_Arab": "Modern Standard Arabic",
    "arz_Arab": "Egyptian Arabic",
    "ary_Arab": "Moroccan Arabic",
    "acm_Arab": "Mesopotamian Arabic",
    "acq_Arab": "Ta'izzi-Adeni Arabic",
    "aeb_Arab": "Tunisian Arabic",
    "ajp_Arab": "South Levantine Arabic",
    "apc_Arab": "North Levantine Arabic",
    "ars_Arab": "Najdi Arabic",
    # Other families of the project
    "eng_Latn": "English",
    "fin_Latn": "Finnish",
    "fkv_Latn": "Kven",
    "deu_Latn": "German",
    "nds_Latn": "Low German",
    "por_Latn": "Portuguese",
    "por_Latn_BR": "Brazilian Portuguese",
    "por_Latn_PT": "European Portuguese",
    "fra_Latn": "French",
    "ind_Latn": "Indonesian",
    "zsm_Latn": "Standard Malay",
    # The synthetic family of :mod:`.family`
    "piv_Latn": "Synthetic Pivot",
    "std_Latn": "Synthetic Standard",
    **{f"vr{c}_Latn": f"Synthetic Variety {c.upper()}" for c in "abcdefghij"},
    # MADAR ``lang`` values (city dialects, MSA, and the English/French BTEC sides)
    "MSA": "Modern Standard Arabic",
    "EN": "English",
    "FR": "French",
    **{
        code: f"{city} Arabic"
        for code, city in {
            "ALE": "Aleppo", "ALG": "Algiers", "ALX": "Alexandria", "AMM": "Amman",
            "ASW": "Aswan", "BAG": "Baghdad", "BAS": "Basra", "BEI": "Beirut",
            "BEN": "Benghazi", "CAI": "Cairo", "DAM": "Damascus", "DOH": "Doha",
            "FES": "Fes", "JED": "Jeddah", "JER": "Jerusalem", "KHA": "Khartoum",
            "MOS": "Mosul", "MUS": "Muscat", "RAB": "Rabat", "RIY": "Riyadh",
            "SAL": "Salt", "SAN": "Sanaa", "SFX": "Sfax", "TRI": "Tripoli", "TUN": "Tunis",
        }.items()
    },
}  # fmt: skip


def variety_name(code: str) -> str:
    """The English name of ``code`` (``arz_Arab`` → ``Egyptian Arabic``); unknown → ``code``."""
    return VARIETY_NAMES.get(code, code)
