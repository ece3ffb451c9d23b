"""Labelled sample texts written for Kogitune: they test the filters and measure language ID (docs/filters.md).

English at scale comes from the KJV (kogitune.corpora); these add modern English and the other languages. Each
entry is (language code, text). SHORT holds single sentences, the hard case for language ID.
"""

from __future__ import annotations

JAPANESE = (
    "私の町には古い図書館がある。木造の二階建てで、床を歩くたびに小さな音がする。子どもの頃、私は毎週土曜日に"
    "そこへ通い、窓際の席で冒険小説を読んだ。司書のおばあさんは、返却が遅れても決して叱らなかった。その代わりに、"
    "次に読むべき本をそっと机の上に置いてくれたのである。今思えば、あの一冊一冊が私の進む道を決めたのかもしれない。",
    "気象庁によると、今週の後半は全国的に気温が下がり、北日本では雪が降る見込みです。特に山沿いでは大雪となる"
    "おそれがあるため、車で出かける予定のある方は冬用タイヤの準備をしてください。また、空気が乾燥するので、"
    "火の取り扱いにも十分注意が必要です。週末は太平洋側を中心に晴れる日が多くなるでしょう。",
    "富士山は静岡県と山梨県にまたがる活火山で、標高は三七七六メートルである。日本で最も高い山として知られ、"
    "古くから信仰の対象とされてきた。江戸時代には富士講と呼ばれる集団登山が盛んになり、多くの人々が山頂を"
    "目指した。二〇一三年には「富士山－信仰の対象と芸術の源泉」として世界文化遺産に登録された。",
    "プログラミングを学ぶときに大切なのは、完璧な理解を待たずに手を動かすことだ。小さなプログラムを書き、"
    "動かしてみて、思った通りにならない理由を考える。その繰り返しの中で、教科書の説明が急に腑に落ちる瞬間が"
    "ある。エラーメッセージは敵ではなく、次に何を調べればよいかを教えてくれる案内板なのである。",
    "駅前の商店街では、毎年夏になると小さな祭りが開かれる。通りには提灯が並び、焼きそばやかき氷の屋台から"
    "良い匂いが漂ってくる。夕方になると浴衣姿の家族連れが集まり、子どもたちは金魚すくいに夢中になる。"
    "最後に打ち上げられる花火を見ると、今年も夏が来たのだと実感する。",
    "この製品は、家庭で手軽にパンを焼くための電気オーブンです。ご使用の前に、必ず取扱説明書をよくお読みください。"
    "本体を壁から十センチ以上離して設置し、調理中は扉に触れないでください。庫内の掃除は、電源プラグを抜き、"
    "十分に冷めたことを確かめてから行ってください。",
    "日本の鉄道は時間に正確なことで知られている。朝の通勤時間帯には、都市部の路線で二分から三分おきに電車が"
    "到着する。わずか一分の遅れでも車内放送でお詫びが流れることに、海外からの旅行者は驚くという。"
    "その正確さを支えているのは、運転士や駅員だけでなく、夜間に線路を点検する多くの作業員たちである。",
    "茶道は、客をもてなすために湯を沸かし、茶を点てる作法である。千利休によって大成されたとされ、"
    "「一期一会」という言葉に表されるように、その場限りの出会いを大切にする心が重んじられる。"
    "茶室には季節の花が生けられ、掛け軸の言葉がその日の茶会の主題を静かに伝えている。",
)

CHINESE = (
    "长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长数千公里。它修建于不同的朝代，"
    "其中最著名的部分是明朝时期修建的。今天，长城已经成为中国的象征之一，每年吸引着大量来自世界各地的游客。",
    "随着智能手机的普及，越来越多的人习惯在网上购物。只要动动手指，商品就能在一两天内送到家门口。"
    "不过，专家提醒消费者，在享受便利的同时，也要注意保护个人信息，不要随意点击来历不明的链接。",
    "春节是中国最重要的传统节日。除夕晚上，一家人团聚在一起吃年夜饭，看电视节目，等待新年的到来。"
    "孩子们最期待的是收到长辈给的红包，而大人们则忙着贴春联、包饺子，准备迎接新的一年。",
    "學習一門外語需要耐心和毅力。每天堅持聽、說、讀、寫，哪怕只有半個小時，長期下來也會有明顯的進步。"
    "最重要的是不要害怕犯錯，因為錯誤正是學習過程中不可缺少的一部分。",
    "这座城市位于长江下游，气候温和，四季分明。老城区保留着许多明清时期的建筑，狭窄的街道两旁是茶馆和小吃店。"
    "到了晚上，河边的灯光亮起来，游船在水面上缓缓驶过，吸引了许多拍照的游客。",
)

KOREAN = (
    "서울은 대한민국의 수도이자 가장 큰 도시이다. 한강이 도시의 중심을 가로질러 흐르며, 오래된 궁궐과 현대적인 "
    "고층 건물이 함께 어우러져 있다. 매년 수많은 관광객이 경복궁과 명동을 찾는다.",
    "요즘 많은 사람들이 건강을 위해 아침마다 공원에서 걷기 운동을 한다. 전문가들은 하루 삼십 분 정도 꾸준히 걷는 "
    "것만으로도 심장 건강에 큰 도움이 된다고 말한다. 무엇보다 중요한 것은 무리하지 않고 꾸준히 하는 것이다.",
    "김치는 한국의 대표적인 발효 음식으로, 배추와 무에 고춧가루, 마늘, 젓갈 등을 넣어 만든다. 겨울이 오기 전에 "
    "가족과 이웃이 모여 함께 김치를 담그는 것을 김장이라고 하며, 이 문화는 유네스코 인류무형문화유산에 등재되었다.",
    "이 책은 작은 시골 마을에서 자란 소녀가 꿈을 찾아 도시로 떠나는 이야기를 담고 있다. 작가는 따뜻하고 섬세한 "
    "문체로 주인공의 성장 과정을 그려 내어 많은 독자들의 공감을 얻었다.",
)

ENGLISH = (
    "The library on the corner of our street has been open for more than a hundred years. Its wooden floors "
    "creak, the reading room smells of old paper, and the librarians still remember the names of the children "
    "who come in every Saturday. When the city proposed closing it last spring, hundreds of people wrote letters, "
    "and in the end the council found the money to keep its doors open.",
    "To install the package, create a virtual environment and run the installer from the project directory. "
    "If the build fails, check that you have a compiler and the development headers for your version of the "
    "language. Most problems come from an old version of the package manager, so upgrade it first and try again.",
    "Scientists have found that the glaciers in the northern mountains are melting faster than predicted. The "
    "researchers measured the thickness of the ice at dozens of sites over ten years and compared it with older "
    "records. They warn that the loss of ice will affect the water supply of the towns in the valleys below.",
    "She took the early train to the coast, watching the fields turn from green to gold as the sun came up. "
    "By the time she reached the harbour the fishing boats had already gone out, and the only sound was the "
    "wind in the ropes of the sailing boats that were still tied to the quay.",
)

FRENCH = (
    "La bibliothèque municipale sera fermée pendant deux semaines pour des travaux de rénovation. Les lecteurs "
    "pourront rendre leurs livres dans la boîte située à l'entrée, et les prêts en cours seront prolongés "
    "automatiquement jusqu'à la réouverture.",
    "Il faisait déjà nuit quand nous sommes arrivés au village. Les rues étaient vides, mais une lumière brillait "
    "encore à la fenêtre de l'auberge, et la patronne nous a servi une soupe chaude avant de nous montrer nos "
    "chambres.",
)

GERMAN = (
    "Die Stadt plant, im nächsten Jahr neue Radwege entlang des Flusses zu bauen. Damit sollen mehr Menschen dazu "
    "gebracht werden, das Auto stehen zu lassen und mit dem Fahrrad zur Arbeit zu fahren.",
    "Nach dem langen Winter freuen sich viele Menschen auf den Frühling. In den Parks blühen die ersten Blumen, und "
    "am Wochenende sind die Cafés am Marktplatz wieder voll mit Gästen, die in der Sonne sitzen.",
)

SPANISH = (
    "El museo de la ciudad abrirá una nueva sala dedicada a la historia del puerto. Los visitantes podrán ver mapas "
    "antiguos, maquetas de barcos y fotografías de los pescadores que trabajaron allí durante el siglo pasado.",
    "Cada verano, la familia viajaba al pueblo de los abuelos para pasar las vacaciones. Los niños pasaban las tardes "
    "en el río y por la noche escuchaban las historias que contaba el abuelo en la plaza.",
)

SHORT = (
    ("ja", "今日はとても良い天気ですね。"),
    ("ja", "この本は面白かった。"),
    ("ja", "明日の会議は午後三時からです。"),
    ("ja", "コンピュータのメモリが足りません。"),
    ("ja", "東京駅で友達に会った。"),
    ("ja", "猫が好きです。"),
    ("zh", "我今天很忙，没有时间吃饭。"),
    ("zh", "这个问题很难回答。"),
    ("zh", "我們明天去公園散步吧。"),
    ("zh", "他在北京大学学习经济。"),
    ("ko", "오늘 날씨가 정말 좋네요."),
    ("ko", "저는 커피를 좋아합니다."),
    ("ko", "내일 다시 연락드리겠습니다."),
    ("en", "The meeting has been moved to Thursday afternoon."),
    ("en", "Please send me the report by the end of the day."),
    ("en", "I think it is going to rain tonight."),
    ("en", "Where is the nearest station?"),
    ("fr", "Je ne sais pas où il est allé hier soir."),
    ("de", "Ich habe keine Zeit, weil ich arbeiten muss."),
    ("es", "No sé si ella va a venir a la fiesta."),
)


def labelled_paragraphs() -> list[tuple[str, str]]:
    """(language, text) for every paragraph above."""
    groups = {"ja": JAPANESE, "zh": CHINESE, "ko": KOREAN, "en": ENGLISH, "fr": FRENCH, "de": GERMAN, "es": SPANISH}
    return [(language, text) for language, texts in groups.items() for text in texts]
