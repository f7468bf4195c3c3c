"""Users, passwords (Argon2id), personal API tokens and the failed-login rate limit."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from moderator.store.tables import ApiToken, LoginFailure, Role, User, WebSession, utcnow

# OWASP password storage cheat sheet: Argon2id, m=19 MiB, t=2, p=1.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)
# Verified against when the user does not exist, so timing does not reveal who exists.
_DUMMY_HASH = HASHER.hash(secrets.token_hex(16))
MIN_PASSWORD = 8
TOKEN_TOUCH_EVERY = timedelta(seconds=60)  # the minute an account page shows is all last_used means


class UserError(ValueError):
    """A user operation that cannot be done (unknown name, duplicate, weak password)."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_user(db: Session, name: str, role: Role, password: str) -> User:
    name = name.strip()
    if not name or len(name) > 64:
        raise UserError("a user name is 1 to 64 characters")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password has at least {MIN_PASSWORD} characters")
    if find_user(db, name) is not None:
        raise UserError(f"user {name!r} exists already")
    user = User(name=name, role=Role(role).value, password_hash=HASHER.hash(password), disabled=False)
    db.add(user)
    db.flush()
    return user


def find_user(db: Session, name: str) -> User | None:
    return db.scalars(select(User).where(User.name == name)).one_or_none()


def get_user(db: Session, name: str) -> User:
    user = find_user(db, name)
    if user is None:
        raise UserError(f"no user named {name!r}")
    return user


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.name)))


def set_disabled(db: Session, name: str, disabled: bool) -> User:
    """Disabling also ends the user's sessions and revokes their API tokens."""
    user = get_user(db, name)
    user.disabled = disabled
    if disabled:
        db.execute(delete(WebSession).where(WebSession.user_id == user.id))
        for token in db.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
            token.revoked = True
    return user


def set_role(db: Session, name: str, role: Role) -> User:
    user = get_user(db, name)
    user.role = Role(role).value
    return user


def check_password(db: Session, name: str, password: str) -> User | None:
    """The enabled user with this name and password, else None (same cost either way)."""
    user = find_user(db, name)
    try:
        HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    if HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = HASHER.hash(password)
    return user


def create_token(db: Session, name: str, label: str = "") -> str:
    """A new personal API token for `name`; the clear text is returned once, never stored."""
    user = get_user(db, name)
    token = "mod_" + secrets.token_urlsafe(32)
    db.add(ApiToken(token_hash=sha256_hex(token), user_id=user.id, label=label))
    db.flush()
    return token


def user_for_token(db: Session, token: str) -> User | None:
    row = db.scalars(select(ApiToken).where(ApiToken.token_hash == sha256_hex(token))).one_or_none()
    if row is None or row.revoked:
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    now = utcnow()
    if row.last_used is None or now - row.last_used > TOKEN_TOUCH_EVERY:
        row.last_used = now  # at most this often: a token's every request need not be a write
    return user


def list_tokens(db: Session, name: str | None = None) -> list[tuple[ApiToken, str]]:
    """(token, owner name) of `name`'s API tokens, or of every user's when None; newest first."""
    query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id.desc())
    if name is not None:
        query = query.where(User.id == get_user(db, name).id)
    return [(token, owner) for token, owner in db.execute(query).all()]


def revoke_token(db: Session, token_id: int, actor: User | None) -> tuple[ApiToken, str]:
    """Revoke one token: the actor's own, or anyone's for an admin or for the operator at the CLI
    (actor None). Another user's token reads as unknown, so ids of others' tokens are not revealed."""
    token = db.get(ApiToken, token_id)
    owner = db.get(User, token.user_id) if token is not None else None
    may = actor is None or actor.role == Role.ADMIN or (owner is not None and owner.id == actor.id)
    if token is None or owner is None or not may:
        raise UserError(f"no API token {token_id}")
    token.revoked = True
    return token, owner.name


# --- failed-login rate limit -------------------------------------------------------
# Each try is recorded (and committed) before the count that decides it: of any number of
# concurrent tries, the k-th to commit counts at least k rows, so at most `max_failures`
# reach the password check, on SQLite and PostgreSQL alike, without locks. A try that
# passes keeps its row as the failure it turns out to be (a success clears the rows); a
# refused try removes its own, so the window runs from the last real failure.


def _key(name: str, client: str) -> tuple[str, str]:
    return name[:255], client[:64]


def failures_since(db: Session, name: str, client: str, window_minutes: int) -> int:
    username, address = _key(name, client)
    since = utcnow() - timedelta(minutes=window_minutes)
    count = db.scalar(
        select(func.count())
        .select_from(LoginFailure)
        .where(LoginFailure.username == username, LoginFailure.client == address, LoginFailure.at >= since)
    )
    return count or 0


def record_attempt(db: Session, name: str, client: str, window_minutes: int) -> LoginFailure:
    """Record one try as a failure and commit it (the caller's pending work too)."""
    username, address = _key(name, client)
    attempt = LoginFailure(username=username, client=address)
    db.add(attempt)
    # Old rows are of no use to the limit; pruning here keeps the table small.
    db.execute(delete(LoginFailure).where(LoginFailure.at < utcnow() - timedelta(minutes=window_minutes)))
    db.commit()
    return attempt


def clear_failures(db: Session, name: str, client: str) -> None:
    username, address = _key(name, client)
    db.execute(delete(LoginFailure).where(LoginFailure.username == username, LoginFailure.client == address))


def login(db: Session, name: str, password: str, client: str, max_failures: int, window_minutes: int) -> User | None:
    """Check a login under the rate limit; raises UserError when too many tries failed (the caller commits)."""
    attempt = record_attempt(db, name, client, window_minutes)
    if failures_since(db, name, client, window_minutes) > max_failures:
        db.execute(delete(LoginFailure).where(LoginFailure.id == attempt.id))
        raise UserError("too many failed logins: try again later")
    user = check_password(db, name, password)
    if user is None:
        return None
    clear_failures(db, name, client)
    return user
