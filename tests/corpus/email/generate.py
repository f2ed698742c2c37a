# ruff: noqa: RUF001  (CJK text uses full-width punctuation on purpose)
"""How the e-mail corpus was made: real-world-shaped messages in their real encodings.

Each message is written byte for byte as the mailer named in its headers sends it (header
order, encoded-word style, transfer encoding, CRLF line ends), because the quirks are the
point. The .eml files are committed; re-run this only to change or add samples:

    .venv/bin/python tests/corpus/email/generate.py

Expected results live next to each file as ``<name>.expected.json`` and are written by
hand (this script never touches them).
"""

from __future__ import annotations

import base64
import quopri
import textwrap
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def b64(data: bytes) -> str:
    """Base64 folded at 76 columns, as mailers do."""
    return "\r\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76))


def word(text: str, charset: str, codec: str | None = None) -> str:
    """One RFC 2047 B encoded word."""
    return f"=?{charset}?B?{base64.b64encode(text.encode(codec or charset)).decode()}?="


def qp(data: bytes) -> str:
    """Quoted-printable body text with CRLF line ends."""
    return quopri.encodestring(data.replace(b"\r\n", b"\n")).decode().replace("\n", "\r\n")


def crlf(template: str, /, **values: str) -> str:
    """Dedent a block, then fill its ``<<name>>`` slots (multi-line values survive the
    dedent that way) and end every line with CRLF."""
    text = textwrap.dedent(template).lstrip("\n")
    for name, value in values.items():
        text = text.replace(f"<<{name}>>", value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def write(name: str, head: str, body: bytes | str) -> None:
    """Write ``<name>.eml``: headers, a blank line, the body."""
    data = crlf(head).encode("ascii", "surrogateescape") if isinstance(head, str) else head
    payload = body.encode("ascii") if isinstance(body, str) else body
    (HERE / f"{name}.eml").write_bytes(data.rstrip(b"\r\n") + b"\r\n\r\n" + payload)


def korean_euc_kr() -> None:
    """Daum/Naver-style webmail: EUC-KR (with a CP949-only syllable), base64, alternative."""
    text = ("안녕하세요, 쇼핑몰 담당자님.\r\n\r\n주문번호 20261122-0001 상품이 아직 도착하지 "
            "않았습니다.\r\n'똠방각하' 머그컵 배송 상황 확인 부탁드립니다.\r\n\r\n감사합니다.\r\n"
            "김민수 드림\r\n")
    html = ("<html><body><p>안녕하세요, 쇼핑몰 담당자님.</p><p>주문번호 20261122-0001 상품이 "
            "아직 도착하지 않았습니다.<br>'똠방각하' 머그컵 배송 상황 확인 부탁드립니다.</p>"
            "<p>감사합니다.<br>김민수 드림</p></body></html>")
    head = f"""
        Return-Path: <minsu.kim@daum.example>
        Received: from mail.daum.example (mail.daum.example [203.133.170.12])
        \tby mx.shop.example with ESMTPS id 4Zx9; Sun, 22 Nov 2026 10:01:02 +0900
        Date: Sun, 22 Nov 2026 10:00:51 +0900 (KST)
        From: {word("김민수", "EUC-KR", "cp949")} <minsu.kim@daum.example>
        To: support@shop.example
        Subject: {word("[문의] 주문한 상품이 아직 안 왔어요", "EUC-KR", "cp949")}
        Message-ID: <20261122100051.AB12CD@daum.example>
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="----=_NextPart_000_0012_01DB3C"
        X-Mailer: Daum Web Mailer 1.1
        """
    body = crlf("""
        This is a multi-part message in MIME format.

        ------=_NextPart_000_0012_01DB3C
        Content-Type: text/plain; charset="euc-kr"
        Content-Transfer-Encoding: base64

        <<text>>

        ------=_NextPart_000_0012_01DB3C
        Content-Type: text/html; charset="euc-kr"
        Content-Transfer-Encoding: quoted-printable

        <<html>>
        ------=_NextPart_000_0012_01DB3C--
        """, text=b64(text.encode("cp949")), html=qp(html.encode("cp949")))
    write("korean-euc-kr", head, body)


def korean_iso_2022_kr() -> None:
    """An old Korean mail client: ISO-2022-KR, 7bit, encoded-word subject in the same."""
    text = "고객센터 담당자님께,\n\n환불 요청드립니다. 상품이 파손되어 도착했습니다.\n\n박지영\n"
    body = "".join(line.encode("iso2022_kr").decode("ascii") + "\r\n"
                   for line in text.splitlines())
    head = f"""
        Date: Sat, 21 Nov 2026 18:30:00 +0900
        From: {word("박지영", "ISO-2022-KR", "iso2022_kr")} <jiyoung.park@korea.example>
        To: Shop Support <support@shop.example>
        Subject: {word("환불 요청", "ISO-2022-KR", "iso2022_kr")}
        Message-ID: <3F1A2B3C.7D8E9F00@korea.example>
        X-Mailer: Mozilla 4.78 [ko] (Win98; U)
        MIME-Version: 1.0
        Content-Type: text/plain; charset=ISO-2022-KR
        Content-Transfer-Encoding: 7bit
        """
    write("korean-iso-2022-kr", head, body)


def japanese_iso_2022_jp() -> None:
    """Outlook on Japanese Windows: ISO-2022-JP with NEC specials (①, ㈱), split subject."""
    def jis(text: str) -> bytes:
        # Python cannot encode the NEC rows into ISO-2022-JP; place them by JIS code.
        out = b""
        for chunk in text.split("①"):
            out += chunk.replace("㈱", "\0").encode("iso2022_jp").replace(
                b"\0", b"\x1b$B\x2d\x6a\x1b(B") + b"\x1b$B\x2d\x21\x1b(B"
        return out[: -len(b"\x1b$B\x2d\x21\x1b(B")]

    lines = ["山田商事㈱の山田です。", "", "ご注文の件で連絡いたします。",
             "①配送日の変更をお願いします。", "カタカナ表記の住所で登録されています。", "",
             "よろしくお願いいたします。"]
    body = "".join(jis(line).decode("ascii") + "\r\n" if line else "\r\n" for line in lines)
    subject = "配送日変更のお願い（注文番号 A-1029）"
    half = len(subject) // 2
    head = f"""
        Date: Fri, 20 Nov 2026 09:15:00 +0900
        From: {word("山田 太郎", "ISO-2022-JP", "iso2022_jp")} <taro.yamada@yamada-shoji.example>
        To: <support@shop.example>
        Subject: {word(subject[:half], "ISO-2022-JP", "iso2022_jp")}
         {word(subject[half:], "ISO-2022-JP", "iso2022_jp")}
        Message-ID: <000001db3c2a$5e4f6a10$1a0b3c4d@yamada-shoji.example>
        MIME-Version: 1.0
        Content-Type: text/plain;
        \tcharset="iso-2022-jp"
        Content-Transfer-Encoding: 7bit
        X-Mailer: Microsoft Outlook 16.0
        Thread-Index: AdtcKl5PahAaCzxNTn6K3x1oYw==
        Content-Language: ja
        """
    write("japanese-iso-2022-jp", head, body)


def japanese_shift_jis() -> None:
    """A Japanese feature phone / older webmail: Shift_JIS 8bit, with cp932-only glyphs."""
    text = ("お世話になっております。髙橋です。\r\n注文した商品のサイズ交換は可能でしょうか？\r\n"
            "①Ｍサイズ→Ｌサイズ\r\n②色はそのままで～\r\n\r\n髙橋\r\n")
    head = f"""
        Date: Thu, 19 Nov 2026 22:04:11 +0900
        From: {word("髙橋 花子", "Shift_JIS", "cp932")} <hanako@docomo.example>
        To: support@shop.example
        Subject: {word("サイズ交換について", "Shift_JIS", "cp932")}
        Message-ID: <4d2f1e0c.8a9b@docomo.example>
        MIME-Version: 1.0
        Content-Type: text/plain; charset="Shift_JIS"
        Content-Transfer-Encoding: 8bit
        """
    write("japanese-shift-jis", head, text.encode("cp932"))


def chinese_gb2312() -> None:
    """Foxmail/QQ Mail: labeled GB2312 but, like everyone's, really GBK (喆 is GBK-only)."""
    text = "您好，\r\n\r\n我是王喆。我上周购买的耳机没有声音，请问如何退货？\r\n\r\n谢谢！\r\n"
    head = f"""
        Date: Wed, 18 Nov 2026 15:20:00 +0800
        From: "{word("王喆", "gb2312", "gbk")}" <wangzhe@qq.example>
        To: "support" <support@shop.example>
        Subject: {word("退货申请", "gb2312", "gbk")}
        Mime-Version: 1.0
        Content-Type: text/plain;
        \tcharset="gb2312"
        Content-Transfer-Encoding: base64
        X-Mailer: Foxmail 7.2.25.254[cn]
        Message-ID: <202611181520001234567@qq.example>
        """
    write("chinese-gb2312", head, b64(text.encode("gbk")) + "\r\n")


def windows_1252() -> None:
    """Outlook (Western): windows-1252 quoted-printable with curly quotes, €, accents."""
    text = ("Hello,\r\n\r\nI was charged \u20ac49.90 twice for order #55123 \u2013 "
            "could you refund one of them?\r\nThe caf\u00e9 mug arrived fine, "
            "\u201cthanks\u201d for that.\r\n\r\nBest regards,\r\nRen\u00e9e M\u00fcller\r\n")
    head = """
        From: =?windows-1252?Q?Ren=E9e_M=FCller?= <renee.mueller@example.de>
        To: "support@shop.example" <support@shop.example>
        Subject: =?windows-1252?Q?Double_charge_=96_order_#55123?=
        Date: Tue, 17 Nov 2026 08:45:12 +0100
        Message-ID: <AM0PR07MB4321ABCD1234@AM0PR07MB4321.eurprd07.prod.outlook.example>
        Accept-Language: de-DE, en-US
        Content-Language: en-US
        X-MS-Has-Attach:
        MIME-Version: 1.0
        Content-Type: text/plain; charset="windows-1252"
        Content-Transfer-Encoding: quoted-printable
        """
    write("windows-1252", head, qp(text.encode("cp1252")))


def outlook_html_inline_image() -> None:
    """Outlook: HTML only (no text part) in multipart/related with a cid: screenshot."""
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJ"
        "RU5ErkJggg==")
    html = (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:'
        'office:office"><head><meta http-equiv="Content-Type" content="text/html; '
        'charset=utf-8"><style><!-- p.MsoNormal {margin:0cm; font-family:"Calibri"} --></style>'
        '<!--[if gte mso 9]><xml><o:shapedefaults v:ext="edit" spidmax="1026" /></xml>'
        '<![endif]--></head><body lang="EN-US" link="#0563C1"><div class="WordSection1">'
        '<p class="MsoNormal">Hi team,<o:p></o:p></p><p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">The checkout page shows an error when I pay with my card '
        '(screenshot below). Order total was 120,000&nbsp;KRW.<o:p></o:p></p>'
        '<p class="MsoNormal"><img width="640" height="360" style="width:6.6666in" '
        'id="Picture_x0020_1" src="cid:image001.png@01DB3C2A.5E4F6A10" alt="checkout error">'
        '<o:p></o:p></p><p class="MsoNormal">Details: <a href="https://shop.example/orders/'
        '77">order 77</a><o:p></o:p></p><p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">Thanks,<o:p></o:p></p><p class="MsoNormal">Daniel Choi<o:p>'
        '</o:p></p></div></body></html>')
    head = """
        From: Daniel Choi <daniel.choi@corp.example>
        To: "support@shop.example" <support@shop.example>
        Subject: Checkout error with card payment
        Thread-Topic: Checkout error with card payment
        Thread-Index: AdtcKl5PahAaCzxNTn6K3x1oYwAAAA==
        Date: Mon, 16 Nov 2026 11:22:33 +0000
        Message-ID: <SEYPR06MB5678EFGH@SEYPR06MB5678.apcprd06.prod.outlook.example>
        Accept-Language: en-US, ko-KR
        Content-Language: en-US
        X-MS-Has-Attach: yes
        X-MS-TNEF-Correlator:
        Content-Type: multipart/related;
        \tboundary="_004_SEYPR06MB5678EFGH_";
        \ttype="text/html"
        MIME-Version: 1.0
        """
    body = crlf("""
        --_004_SEYPR06MB5678EFGH_
        Content-Type: text/html; charset="utf-8"
        Content-Transfer-Encoding: quoted-printable

        <<html>>
        --_004_SEYPR06MB5678EFGH_
        Content-Type: image/png; name="image001.png"
        Content-Description: image001.png
        Content-Disposition: inline; filename="image001.png"; size=<<size>>;
        \tcreation-date="Mon, 16 Nov 2026 11:22:30 GMT";
        \tmodification-date="Mon, 16 Nov 2026 11:22:30 GMT"
        Content-ID: <image001.png@01DB3C2A.5E4F6A10>
        Content-Transfer-Encoding: base64

        <<png>>

        --_004_SEYPR06MB5678EFGH_--
        """, html=qp(html.encode()), size=str(len(png)), png=b64(png))
    write("outlook-html-inline-image", head, body)


def gmail_reply() -> None:
    """Gmail: a reply above quoted history; the attribution line wraps; plus-address token."""
    text = crlf("""
        Thanks, that works. One more thing: can I change the delivery address to my office?

        Seoul, Gangnam-gu, Teheran-ro 123, 5F

        On Sat, Nov 21, 2026 at 6:12 PM Shop Support <
        support+c-01jdx6k8s7m2q4v9w3e5r8t1y0@shop.example> wrote:

        > Hello Minji,
        >
        > Your order #88123 has shipped. Tracking number: 6012-3344-5566.
        >
        > -- Shop Support
        >
        """)
    html = ('<div dir="ltr">Thanks, that works. One more thing: can I change the delivery '
            'address to my office?<div><br></div><div>Seoul, Gangnam-gu, Teheran-ro 123, 5F'
            '</div></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Sat, '
            'Nov 21, 2026 at 6:12 PM Shop Support &lt;<a href="mailto:support+c-01jdx6k8s7m2q4v'
            '9w3e5r8t1y0@shop.example">support+c-01jdx6k8s7m2q4v9w3e5r8t1y0@shop.example</a>&gt;'
            ' wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
            'border-left:1px solid rgb(204,204,204);padding-left:1ex">Hello Minji,<br><br>Your '
            'order #88123 has shipped. Tracking number: 6012-3344-5566.<br><br>-- Shop Support'
            '</blockquote></div>')
    head = """
        MIME-Version: 1.0
        Date: Sun, 22 Nov 2026 09:03:12 +0900
        References: <msg_01JDX6K8S7M2Q4V9W3E5R8T1Y0@shop.example>
         <msg_01JDX7AAAAAAAAAAAAAAAAAAAA@shop.example>
        In-Reply-To: <msg_01JDX7AAAAAAAAAAAAAAAAAAAA@shop.example>
        Message-ID: <CAF3xq=Zp0Yk9c6TtW-8yQ2nV1s@mail.gmail.example>
        Subject: Re: Your order #88123 has shipped
        From: Minji Lee <minji.lee@gmail.example>
        To: Shop Support <support+c-01jdx6k8s7m2q4v9w3e5r8t1y0@shop.example>
        Content-Type: multipart/alternative; boundary="000000000000a1b2c3d4e5f60718"
        """
    body = crlf("""
        --000000000000a1b2c3d4e5f60718
        Content-Type: text/plain; charset="UTF-8"
        Content-Transfer-Encoding: quoted-printable

        <<text>>
        --000000000000a1b2c3d4e5f60718
        Content-Type: text/html; charset="UTF-8"
        Content-Transfer-Encoding: quoted-printable

        <<html>>
        --000000000000a1b2c3d4e5f60718--
        """, text=text, html=qp(html.encode()))
    write("gmail-reply-quoted", head, body)


def korean_gmail_reply() -> None:
    """Gmail in Korean: the attribution reads "…님이 작성:"; a phone signature follows."""
    text = ("네, 확인했습니다. 내일 오전에 받을 수 있을까요?\n\nGalaxy에서 보냄\n\n"
            "2026년 11월 21일 (토) 오후 6:12, Shop Support <support@shop.example>님이 작성:\n\n"
            "> 고객님, 주문하신 상품이 발송되었습니다.\n> 운송장 번호: 6012-3344-5566\n")
    head = """
        MIME-Version: 1.0
        Date: Sun, 22 Nov 2026 09:30:00 +0900
        In-Reply-To: <msg_01JDX7BBBBBBBBBBBBBBBBBBBB@shop.example>
        References: <msg_01JDX7BBBBBBBBBBBBBBBBBBBB@shop.example>
        Message-ID: <CAK9mQv7=hX2@mail.gmail.example>
        Subject: =?UTF-8?B?UmU6IOyjvOusuO2VmOyLoCDsg4HtkojsnbQg67Cc7Iah65CY7JeI7Iq164uI64uk?=
        From: =?UTF-8?B?7LWc7ISc7Jew?= <seoyeon.choi@gmail.example>
        To: support@shop.example
        Content-Type: text/plain; charset="UTF-8"
        Content-Transfer-Encoding: base64
        """
    write("korean-gmail-reply", head, b64(text.replace("\n", "\r\n").encode()) + "\r\n")


def apple_mail_attachments() -> None:
    """Apple Mail: flowed text, a PDF with an RFC 2231 Korean name, an image, more text."""
    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    jpeg = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
    pdf_name = urllib.parse.quote("주문서_20261122.pdf".encode())
    long_name = "파손된 상품 사진 (택배 상자 포함).jpg".encode()
    pieces = [urllib.parse.quote(long_name[i:i + 21]) for i in range(0, len(long_name), 21)]
    continuation = ";\r\n".join(
        f"\tfilename*{i}*={'utf-8' + chr(39) * 2 if i == 0 else ''}{p}"
        for i, p in enumerate(pieces))
    head = """
        From: =?utf-8?Q?=EC=A0=95=ED=95=98=EB=8A=98?= <haneul.jung@icloud.example>
        Content-Type: multipart/mixed;
        \tboundary="Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0"
        Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))
        Subject: =?utf-8?B?7YyM7IaQ65CcIOyDge2SiCDqtZDtmZgg7JqU7LKt?=
        Date: Sat, 21 Nov 2026 21:10:45 +0900
        Message-Id: <8E7F6A5B-4C3D-2E1F-0A9B-8C7D6E5F4A3B@icloud.example>
        To: support@shop.example
        X-Mailer: Apple Mail (2.3774.600.62)
        """
    flowed = ("안녕하세요. 어제 받은 상품이 파손되어 교환을 요청드 \n"
              "립니다. 주문서와 사진을 첨부합니다.\n")
    body = crlf("""
        --Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0
        Content-Transfer-Encoding: quoted-printable
        Content-Type: text/plain;
        \tcharset=utf-8;
        \tdelsp=yes;
        \tformat=flowed

        <<flowed>>
        --Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0
        Content-Disposition: attachment;
        \tfilename*=utf-8''<<pdf_name>>
        Content-Type: application/pdf;
        \tx-unix-mode=0644;
        \tname="=?utf-8?B?7KO866y47IScXzIwMjYxMTIyLnBkZg==?="
        Content-Transfer-Encoding: base64

        <<pdf>>

        --Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0
        Content-Disposition: attachment;
        <<continuation>>
        Content-Type: image/jpeg;
        \tx-unix-mode=0644
        Content-Transfer-Encoding: base64

        <<jpeg>>

        --Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0
        Content-Transfer-Encoding: 7bit
        Content-Type: text/plain;
        \tcharset=us-ascii

        Order #90210

        --Apple-Mail=_5B1C2D3E-4F50-6172-8394-A5B6C7D8E9F0--
        """, flowed=qp(flowed.encode()), pdf_name=pdf_name, pdf=b64(pdf),
                continuation=continuation, jpeg=b64(jpeg))
    write("apple-mail-attachments", head, body)


def dsn_bounce() -> None:
    """Postfix DSN: multipart/report for our reply to an address that does not exist."""
    head = """
        Return-Path: <>
        Date: Sun, 22 Nov 2026 10:15:03 +0900 (KST)
        From: MAILER-DAEMON@mx.customer.example (Mail Delivery System)
        Subject: Undelivered Mail Returned to Sender
        To: support@shop.example
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status;
        \tboundary="5C1F23A0B4.1763774103/mx.customer.example"
        Content-Transfer-Encoding: 8bit
        Message-Id: <20261122011503.5C1F23A0B4@mx.customer.example>
        """
    body = crlf("""
        This is a MIME-encapsulated message.

        --5C1F23A0B4.1763774103/mx.customer.example
        Content-Description: Notification
        Content-Type: text/plain; charset=us-ascii

        This is the mail system at host mx.customer.example.

        I'm sorry to have to inform you that your message could not
        be delivered to one or more recipients. It's attached below.

        <nobody@customer.example>: host mail.customer.example[10.1.2.3] said: 550 5.1.1
            <nobody@customer.example>: Recipient address rejected: User unknown in
            virtual mailbox table (in reply to RCPT TO command)

        --5C1F23A0B4.1763774103/mx.customer.example
        Content-Description: Delivery report
        Content-Type: message/delivery-status

        Reporting-MTA: dns; mx.customer.example
        X-Postfix-Queue-ID: 5C1F23A0B4
        Arrival-Date: Sun, 22 Nov 2026 10:15:02 +0900 (KST)

        Final-Recipient: rfc822; nobody@customer.example
        Original-Recipient: rfc822;nobody@customer.example
        Action: failed
        Status: 5.1.1
        Remote-MTA: dns; mail.customer.example
        Diagnostic-Code: smtp; 550 5.1.1 <nobody@customer.example>: Recipient address
            rejected: User unknown in virtual mailbox table

        --5C1F23A0B4.1763774103/mx.customer.example
        Content-Description: Undelivered Message Headers
        Content-Type: text/rfc822-headers

        From: Shop Support <support@shop.example>
        To: nobody@customer.example
        Subject: Re: Where is my order?
        Message-ID: <msg_01JDX8CCCCCCCCCCCCCCCCCCCC@shop.example>
        Date: Sun, 22 Nov 2026 01:15:01 +0000

        --5C1F23A0B4.1763774103/mx.customer.example--
        """)
    write("dsn-bounce", head, body)


def out_of_office() -> None:
    """Exchange out-of-office (Korean), answering our reply: Auto-Submitted, OOF suppress."""
    text = ("안녕하세요. 11월 20일부터 11월 30일까지 휴가 중입니다.\r\n"
            "급한 용무는 02-123-4567로 연락 주세요.\r\n\r\nI am out of the office until "
            "November 30.\r\n")
    head = f"""
        From: {word("이수진", "utf-8")} <sujin.lee@company.example>
        To: Shop Support <support@shop.example>
        Subject: =?ks_c_5601-1987?B?{base64.b64encode("자동 회신: ".encode("cp949")).decode()}?=
         =?utf-8?Q?Re:_Your_order?=
        Thread-Topic: Re: Your order
        Date: Sun, 22 Nov 2026 02:00:00 +0000
        Message-ID: <OOF-a1b2c3d4e5f6@company.example>
        In-Reply-To: <msg_01JDX9DDDDDDDDDDDDDDDDDDDD@shop.example>
        References: <msg_01JDX9DDDDDDDDDDDDDDDDDDDD@shop.example>
        Auto-Submitted: auto-replied
        X-Auto-Response-Suppress: All
        X-MS-Exchange-Inbox-Rules-Loop: sujin.lee@company.example
        Content-Type: text/plain; charset="ks_c_5601-1987"
        Content-Transfer-Encoding: base64
        MIME-Version: 1.0
        """
    write("out-of-office", head, b64(text.encode("cp949")) + "\r\n")


def mislabeled_charset() -> None:
    """A Korean shopping-mall contact form: EUC-KR bytes labeled ISO-8859-1, raw 8-bit
    UTF-8 subject (no encoded words), display name in raw EUC-KR."""
    text = ("상품 문의드립니다.\r\n사이즈 270mm 재입고 예정이 있나요?\r\n"
            "연락처: 010-1234-5678\r\n")
    head = (b"From: " + "홍길동".encode("cp949") + b" <gildong@form.example>\r\n"
            b"To: support@shop.example\r\n"
            b"Subject: " + "[웹 문의] 재입고 문의".encode() + b"\r\n"
            b"Date: Sun, 22 Nov 2026 11:00:00 +0900\r\n"
            b"Message-ID: <form-8812@www.shop.example>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n")
    write("mislabeled-charset", head, text.encode("cp949"))


def mislabeled_utf8() -> None:
    """UTF-8 sent as US-ASCII 8bit by a script that never set the charset properly."""
    text = "Hi, the café voucher code 'NOËL-2026' doesn't work. — Zoë\r\n주문번호 4411\r\n"
    head = """
        From: zoe@example.fr
        To: support@shop.example
        Subject: Voucher problem
        Date: Sun, 22 Nov 2026 12:00:00 +0100
        Message-ID: <voucher-4411@example.fr>
        MIME-Version: 1.0
        Content-Type: text/plain; charset=us-ascii
        Content-Transfer-Encoding: 8bit
        """
    write("mislabeled-utf8", head, text.encode())


def malformed_mime() -> None:
    """Broken: boundary mismatch, no Message-ID, unparseable date, bare From, bad base64."""
    head = """
        From: broken-mailer@legacy.example
        To: support@shop.example
        Subject: Refund status?
        Date: someday soon
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="----=_Part_1234_5678.1700000000000"
        """
    body = crlf("""
        ------=_Part_1234_9999.1700000000001
        Content-Type: text/plain; charset=UTF-8
        Content-Transfer-Encoding: quoted-printable

        Hello, I returned the jacket two weeks ago (return label RT-5521) and still
        have not received my refund. Can you check? =E2=80=94 Tom

        ------=_Part_1234_9999.1700000000001
        Content-Type: text/html; charset=UTF-8
        Content-Transfer-Encoding: base64

        PGh0bWw+PGJvZHk+SGVsbG8sIEkgcmV0dXJuZWQgdGhlIGphY2tldCB0d28gd2Vla3MgYWdv!!broken
        ------=_Part_1234_9999.1700000000001--
        """)
    write("malformed-mime", head, body)


def bulk_newsletter() -> None:
    """A marketing mail landing in the support inbox: List-Unsubscribe, Precedence bulk."""
    head = """
        From: Deals <news@deals.example>
        To: support@shop.example
        Subject: Black Friday: 70% off everything
        Date: Fri, 27 Nov 2026 07:00:00 +0000
        Message-ID: <campaign-991.support@deals.example>
        List-Unsubscribe: <https://deals.example/unsubscribe?u=1>, <mailto:unsub@deals.example>
        List-Unsubscribe-Post: List-Unsubscribe=One-Click
        Precedence: bulk
        MIME-Version: 1.0
        Content-Type: text/html; charset=utf-8
        Content-Transfer-Encoding: 7bit
        """
    body = crlf("""
        <html><body><h1>Black Friday</h1><p>70% off <b>everything</b>.
        <a href="https://deals.example/bf">Shop now</a></p><p>Unsubscribe anytime.</p>
        </body></html>
        """)
    write("bulk-newsletter", head, body)


def main() -> None:
    """Write every sample."""
    for make in (korean_euc_kr, korean_iso_2022_kr, japanese_iso_2022_jp, japanese_shift_jis,
                 chinese_gb2312, windows_1252, outlook_html_inline_image, gmail_reply,
                 korean_gmail_reply, apple_mail_attachments, dsn_bounce, out_of_office,
                 mislabeled_charset, mislabeled_utf8, malformed_mime, bulk_newsletter):
        make()
    print(f"wrote {len(list(HERE.glob('*.eml')))} messages into {HERE}")


if __name__ == "__main__":
    main()
