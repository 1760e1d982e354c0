"""The question inside a chat message: what the FAQ search and the answer confidence match (issue 12)."""

import pytest

from services.faq.confidence import candidate_features
from services.faq.domain import FaqHit
from services.faq.query_text import search_text, without_ids


@pytest.mark.parametrize(
    ("text", "question"),
    [
        ("亲，请问退货运费谁出呀~~😭", "退货运费谁出"),
        ("你好,昨天拍的东西咋还没发啊,一般要等多久。。。", "昨天拍的东西咋还没发啊,一般要等多久"),
        ("客服 衣服标签我剪掉了 还可以退货么!!", "衣服标签我剪掉了 还可以退货么"),
        ("在吗 能发顺丰吗 急", "能发顺丰吗"),
        ("亲爱的客服你好,我想问下发票怎么开", "发票怎么开"),
        ("HI 运费怎么算", "运费怎么算"),
        ("这个能便宜点吗哈哈", "这个能便宜点吗"),
        ("退款到了吗??", "退款到了吗"),
        # words that only look like filler stay: 亲自 / 客服电话 / 客服态度 / 麻烦死了 / 着急, and 吗 么 呢
        ("亲自去取可以吗", "亲自去取可以吗"),
        ("客服电话多少", "客服电话多少"),
        ("客服态度太差了", "客服态度太差了"),
        ("麻烦死了", "麻烦死了"),
        ("我很着急", "我很着急"),
        ("能退吗", "能退吗"),
        # order / waybill / phone numbers and their label out; small numbers and model names stay
        ("订单号8774199854573939 昨天拍的东西咋还没发啊", "昨天拍的东西咋还没发"),
        ("单号:1764457327401427,我刚付完钱 大概啥时候能发出去", "我刚付完钱 大概啥时候能发出去"),
        ("SF1234567890123 到哪了", "到哪了"),
        ("我的手机号13800138000 收不到验证码", "收不到验证码"),
        ("买了3件 少了1件", "买了3件 少了1件"),
        ("满99元包邮吗", "满99元包邮吗"),
        ("iPhone15 是国行吗", "iPhone15 是国行吗"),
        ("订单号 在哪看", "订单号 在哪看"),
        ("2024060112345678", "2024060112345678"),
        # nothing but filler: as it came
        ("在吗?", "在吗?"),
        ("你好", "你好"),
        ("😭😭", "😭😭"),
    ],
)
def test_the_question_without_its_chat_filler(text, question):
    assert search_text(text) == question


def test_the_confidence_counts_the_words_of_the_question_not_the_filler():
    hit = FaqHit(
        faq_id="faq-009", question="运费怎么收?", answer="满99元包邮", category="物流查询",
        matched_text="运费怎么算", matched_standard=False, score=0.9, source="hybrid", cosine=0.9,
    )  # fmt: skip
    plain = candidate_features([hit], "运费怎么算")
    wrapped = candidate_features([hit], "亲,请问运费怎么算呀~~")
    assert plain[0, 6] == 1.0  # every bigram of the question is in the matched phrasing
    assert (wrapped == plain).all()


def test_the_sentiment_text_keeps_the_tone_but_not_the_numbers():
    assert without_ids("订单2024060112345678到底什么时候发!!") == "订单 到底什么时候发!!"
    assert without_ids("单号:1764457327401427,气死了") == "单号,气死了"
    assert without_ids("13800138000") == "13800138000"  # nothing else: as it came
