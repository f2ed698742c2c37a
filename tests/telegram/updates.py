"""Update JSON as the Bot API sends it (fields per core.telegram.org/bots/api#update)."""

from __future__ import annotations

import itertools
import time
from typing import Any

KIM = {"id": 424242, "is_bot": False, "first_name": "Min-ji", "last_name": "Kim",
       "username": "minji", "language_code": "ko"}
LEE = {"id": 515151, "is_bot": False, "first_name": "Joon", "username": "joon"}
_message_ids = itertools.count(1)


def private_chat(user: dict[str, Any]) -> dict[str, Any]:
    """The private chat with ``user`` (its id is the user's)."""
    return {"id": user["id"], "type": "private", "first_name": user["first_name"],
            **({"username": user["username"]} if "username" in user else {})}


def message(user: dict[str, Any] = KIM, *, chat: dict[str, Any] | None = None,
            message_id: int | None = None, **content: Any) -> dict[str, Any]:
    """A message from ``user`` with ``content`` (``text=…``, ``photo=[…]``, …)."""
    return {"message_id": message_id or next(_message_ids) + 100, "from": user,
            "chat": chat or private_chat(user), "date": int(time.time()), **content}


def text(body: str, user: dict[str, Any] = KIM, **extra: Any) -> dict[str, Any]:
    """``{"message": …}`` with a text."""
    return {"message": message(user, text=body, **extra)}


def photo(file_id: str, *, caption: str | None = None, media_group_id: str | None = None,
          user: dict[str, Any] = KIM) -> dict[str, Any]:
    """A photo in three sizes, as Telegram sends it (the largest last)."""
    sizes = [{"file_id": f"{file_id}-s", "file_unique_id": f"{file_id}-us", "width": 90,
              "height": 67, "file_size": 1200},
             {"file_id": file_id, "file_unique_id": f"{file_id}-u", "width": 1280,
              "height": 960, "file_size": 80000},
             {"file_id": f"{file_id}-m", "file_unique_id": f"{file_id}-um", "width": 320,
              "height": 240, "file_size": 9000}]
    extra: dict[str, Any] = {}
    if caption:
        extra["caption"] = caption
    if media_group_id:
        extra["media_group_id"] = media_group_id
    return {"message": message(user, photo=sizes, **extra)}


def group_chat(chat_id: int = -1001234567890, title: str = "Shop fans") -> dict[str, Any]:
    """A supergroup."""
    return {"id": chat_id, "type": "supergroup", "title": title}
