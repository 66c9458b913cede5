"""Signing in and out of the admin UI in a real browser, and CSRF as a browser meets it."""

from __future__ import annotations

from tests.browser.conftest import LiveSites, Watched, csrf_of, sign_in


def test_a_signed_out_visit_goes_to_sign_in_and_a_wrong_token_is_told(
    live: LiveSites, view: Watched
) -> None:
    page = view.page
    view.expected_statuses.add(401)  # the refused sign-in answers 401
    page.goto(f"{live.secondary.url}admin/geo/jobs")
    assert "/admin/geo/sign_in" in page.url
    assert page.get_by_role("heading", name="Sign in").is_visible()

    page.get_by_label("Admin token").fill("geo-not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_text("That token is not valid.").is_visible()
    assert "geo-not-a-token" not in page.content()


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(
    live: LiveSites, view: Watched
) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    cookies = page.context.cookies()
    assert [c["name"] for c in cookies] == ["geosync_admin"]
    assert cookies[0]["httpOnly"] is True and cookies[0]["sameSite"] == "Strict"
    assert live.token not in cookies[0]["value"]
    assert live.token not in page.content()

    page.get_by_role("button", name="Sign out").click()
    assert page.get_by_text("Signed out.").is_visible()
    page.goto(f"{live.secondary.url}admin/geo/jobs")
    assert "/admin/geo/sign_in" in page.url


def test_a_post_without_the_csrf_token_is_refused(live: LiveSites, view: Watched) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    token = csrf_of(page)

    refused = page.request.post(f"{live.secondary.url}admin/geo/sign_out", form={})
    forged = page.request.post(
        f"{live.secondary.url}admin/geo/sign_out", form={"csrf_token": token[::-1]}
    )

    assert refused.status == 403 and forged.status == 403
    assert "CSRF" in refused.text()
    page.reload()  # still signed in: the refused posts changed nothing
    assert page.get_by_role("button", name="Sign out").is_visible()
